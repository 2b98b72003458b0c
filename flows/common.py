"""Pieces every flow shares: data preparation, and a bounded window of parallel task runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from pydantic import BaseModel

from tasks import events
from tasks.chain.augment import augment
from tasks.chain.evaluate import evaluate
from tasks.chain.ingest import ingest
from tasks.chain.normalize import normalize
from tasks.chain.refs import DatasetRef, ManifestRef, SourceRef, StatsRef, TrainedRef
from tasks.chain.split import split
from tasks.chain.train import train
from tasks.record import record_data
from tasks.registry.register import register
from tasks.results import Registration
from trainlib.config import PipelineConfig, load_config, validate
from trainlib.ensemble import EnsembleConfig, load_ensemble
from trainlib.tuning import SearchConfig, load_search

M = TypeVar("M", bound=BaseModel)


def finished(record: events.Finished) -> None:
    """Tell this process's listeners (tasks/events.py) that a trial, variant or member finished."""
    events.emit(record)


LOADERS: dict[type, Callable[[str], BaseModel]] = {PipelineConfig: load_config, SearchConfig: load_search,
                                                   EnsembleConfig: load_ensemble}


def as_model(value: BaseModel | dict | str, model: type[M]) -> M:
    """A flow parameter as its model, however it arrives: the model itself, a dict (a deployment's JSON
    parameters) or the path of its YAML file (deployments name files in configs/)."""
    if isinstance(value, str):
        return LOADERS[model](value)
    return value if isinstance(value, model) else validate(value, model, model.__name__)


def parameter(name: str, model: type[M]) -> M:
    """This flow run's parameter `name` as `model` (for flow run names)."""
    return as_model(flow_run.parameters[name], model)


def prepare_data(config: PipelineConfig, run_id: str | None,
                 refresh: bool = False) -> tuple[DatasetRef, ManifestRef, StatsRef]:
    """ingest -> split -> normalize (cached unless `refresh`), recorded on the run (if any)
    -> (dataset, manifest, stats)."""
    cached = {"refresh_cache": refresh}
    dataset = ingest.with_options(**cached)(config.data, config.data_dims == 2)
    manifest = split.with_options(**cached)(dataset, config.split, config.data.label_noise)
    stats = normalize.with_options(**cached)(dataset, manifest, config.normalize, config.data.workers)
    if run_id:
        record_data(run_id, dataset, manifest, stats)
    return dataset, manifest, stats


def train_and_register(config: PipelineConfig, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef,
                       workspace: str, run_id: str,
                       source: SourceRef | None = None) -> tuple[TrainedRef, dict, Registration]:
    """augment -> train (from a transfer `source`, if given) -> evaluate -> register on one run
    -> (trained, test metrics, registration)."""
    augmented = augment(config.augment, dataset, manifest, config.training.seed, workspace, run_id)
    trained = train(config, dataset, manifest, stats, augmented, workspace, run_id, source)
    metrics = evaluate(config, dataset, manifest, trained, run_id)
    return trained, metrics, register(config.name, config.register, trained.model, metrics, dataset, stats,
                                             run_id)


def run_bounded(limit: int, submit_next: Callable[[], tuple[Any, PrefectFuture] | None],
                on_done: Callable[[Any, Any], events.Finished]) -> None:
    """Keep up to `limit` task runs going. `submit_next()` submits one more and returns (key, future),
    or None when there is nothing more to run; `on_done(key, result)` gets each result as it finishes
    (an exception object for a failed task run) and returns what progress shows of it, emitted as `finished`."""
    if limit < 1:
        raise ValueError(f"at least one task run must be allowed at a time, not {limit}")
    running: dict[PrefectFuture, Any] = {}
    while True:
        while len(running) < limit and (job := submit_next()) is not None:
            running[job[1]] = job[0]
        if not running:
            return
        done = next(as_completed(list(running)))
        finished(on_done(running.pop(done), done.result(raise_on_failure=False)))
