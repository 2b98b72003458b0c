"""Pieces every flow shares: data preparation, and a bounded window of parallel task runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from pydantic import BaseModel

from tasks.augment import augment
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.normalize import normalize
from tasks.record import finish_run, record_data
from tasks.register import register
from tasks.split import split
from tasks.train import train
from trainlib.config import PipelineConfig
from trainlib.errors import ConfigError


def parameter(name: str, field: str, default: Any = None) -> Any:
    """A field of this flow run's parameter `name`, whether it arrives as a model or as a plain dict
    (for flow run names)."""
    value = flow_run.parameters[name]
    return getattr(value, field) if isinstance(value, BaseModel) else value.get(field, default)


def no_transfer(config: PipelineConfig, command: str) -> None:
    """Only the transfer flow starts from a source model: elsewhere a set transfer.source would be ignored."""
    if config.transfer.source:
        raise ConfigError(f"transfer.source is set, but `trainflow {command}` trains from fresh weights; use "
                          "`trainflow transfer` to start from a source model")


@contextlib.contextmanager
def tracked(run_id: str):
    """Ends the MLflow run with the block: FAILED with the reason if it raises, else FINISHED."""
    try:
        yield
    except BaseException as exc:
        finish_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    finish_run(run_id)


def prepare_data(config: PipelineConfig, run_id: str, refresh: bool = False) -> tuple[dict, dict, dict]:
    """ingest -> split -> normalize (cached unless `refresh`), recorded on the run -> (data, parts, stats)."""
    cached = {"refresh_cache": refresh}
    data = ingest.with_options(**cached)(config.data)
    parts = split.with_options(**cached)(data, config.split)
    stats = normalize.with_options(**cached)(data, parts, config.normalize, config.data.workers)
    record_data(run_id, data, parts, stats)
    return data, parts, stats


def train_and_register(config: PipelineConfig, data: dict, parts: dict, stats: dict, workspace: str,
                       run_id: str, source: dict | None = None) -> tuple[dict, dict, dict]:
    """augment -> train (from a transfer `source`, if given) -> evaluate -> register on one run
    -> (trained, test metrics, registration)."""
    augmented = augment(config.augment, data, parts, config.training.seed, workspace, run_id)
    trained = train(config, data, parts, stats, augmented, workspace, run_id, source)
    metrics = evaluate(config, data, parts, trained, run_id)
    return trained, metrics, register(config.name, config.register, trained, metrics, data, run_id)


def run_bounded(limit: int, submit_next: Callable[[], tuple[Any, PrefectFuture] | None],
                on_done: Callable[[Any, Any], None]) -> None:
    """Keep up to `limit` task runs going. `submit_next()` submits one more and returns (key, future),
    or None when there is nothing more to run; `on_done(key, result)` gets each result as it finishes
    (an exception object for a failed task run)."""
    if limit < 1:
        raise ValueError(f"at least one task run must be allowed at a time, not {limit}")
    running: dict[PrefectFuture, Any] = {}
    while True:
        while len(running) < limit and (job := submit_next()) is not None:
            running[job[1]] = job[0]
        if not running:
            return
        done = next(as_completed(list(running)))
        on_done(running.pop(done), done.result(raise_on_failure=False))
