"""The training pipeline: validate -> ingest -> split -> normalize -> augment -> train -> evaluate -> register."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, parameter, prepare_data, train_and_register
from tasks import tracking
from tasks.chain.report import report
from tasks.record import start_run
from tasks.settings import workspace
from tasks.summaries import RunSummary
from trainlib.config import PipelineConfig


def run_name() -> str:
    """What is trained (plans.title)."""
    return plans.title(parameter("config", PipelineConfig))


DEFAULT = PipelineConfig()  # cnn on the embedded digits


@flow(name="training-pipeline", flow_run_name=run_name)
def training_pipeline(config: PipelineConfig | str = DEFAULT, refresh: bool = False,
                      parent_run_id: str | None = None) -> RunSummary:
    """Train one config (or a config file) end to end; returns the run summary (metrics, registered version,
    gate). `refresh` recomputes ingest/split/normalize instead of reusing their cached outputs; `parent_run_id`
    nests the run under another (a technique study's transfer source)."""
    config = plans.run(as_model(config, PipelineConfig))
    ws = str(workspace(str(flow_run.id)))
    run_id = start_run(config, parent_run_id=parent_run_id)  # the experiment and run exist before anything else logs
    with tracking.finishing(run_id):
        dataset, manifest, stats = prepare_data(config, run_id, refresh)
        trained, metrics, registered = train_and_register(config, dataset, manifest, stats, ws, run_id)
        return report(config.name, run_id, trained, metrics, registered)
