"""The training pipeline: validate -> ingest -> split -> normalize -> augment -> train -> evaluate -> register."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.augment import augment
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.normalize import normalize
from tasks.record import finish_run, record_data, start_run
from tasks.register import register
from tasks.report import report
from tasks.settings import workspace
from tasks.split import split
from tasks.train import train
from trainlib.config import PipelineConfig


def run_name() -> str:
    """What is trained: e.g. `digits-cnn: cnn / adam / cosine`."""
    c = flow_run.parameters["config"]
    c = c if isinstance(c, PipelineConfig) else PipelineConfig.model_validate(c)
    return f"{c.name}: {c.model.name} / {c.optimizer.name} / {c.schedule.name}"


DEFAULT = PipelineConfig()  # cnn on the embedded digits


@flow(name="training-pipeline", flow_run_name=run_name)
def training_pipeline(config: PipelineConfig = DEFAULT, refresh: bool = False) -> dict:
    """Train one config end to end; returns the run summary (metrics, registered version, gate).
    `refresh` recomputes ingest/split/normalize instead of reusing their cached outputs."""
    ws = str(workspace(str(flow_run.id)))
    run_id = start_run(config)  # the experiment and run exist before anything else logs
    try:
        cached = {"refresh_cache": refresh}
        data = ingest.with_options(**cached)(config.data)
        parts = split.with_options(**cached)(data, config.split)
        stats = normalize.with_options(**cached)(data, parts, config.normalize)
        record_data(run_id, data, parts, stats)
        augmented = augment(config.augment, data, parts, config.training.seed, ws, run_id)
        trained = train(config, data, parts, stats, augmented, ws, run_id)
        metrics = evaluate(config, data, parts, trained, run_id)
        registered = register(config.name, config.register, trained, metrics, data, run_id)
        summary = report(config.name, run_id, trained, metrics, registered)
    except BaseException as exc:
        finish_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    finish_run(run_id)
    return summary
