"""Report: a Prefect markdown summary of the run and a table of its per-epoch metrics."""

from __future__ import annotations

import re

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.chain.refs import TrainedRef
from tasks.results import Registration
from tasks.summaries import RunSummary
from tasks.wording import rounded_row, shown

UI_URL = "http://127.0.0.1:5000"  # where `trainflow ui` serves the local store


def run_url(run_id: str) -> str:
    """Link to the run in the MLflow UI (the tracking server's, or `trainflow ui` for a local store)."""
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_URL
    experiment = tracking.client().get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def artifact_key(name: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{name}-{kind}".lower()).strip("-")


def summary(name: str, run_id: str, metrics: dict[str, float], registered: Registration) -> RunSummary:
    """The run of a command that trains: its metrics and registration, with its link."""
    return RunSummary(run_id, name, metrics, registered, run_url(run_id))


def link(what: str, run_id: str) -> str:
    """A markdown link to the run in the MLflow UI, e.g. `MLflow run: [id](url)`."""
    return f"MLflow {what}: [{run_id}]({run_url(run_id)})"


HEADLINES = {  # the Prefect summary's title, by the gate's outcome
    "promoted": "promoted to @{alias}", "not_better": "kept as challenger",
    "below_minimum": "kept as challenger (below the gate)", "not_registered": "not registered",
    "other_input": "kept as challenger (it takes another input than the alias holder)"}


@task(name="report")
def report(name: str, run_id: str, trained: TrainedRef, metrics: dict[str, float],
           registered: Registration) -> RunSummary:
    """-> the run's summary (`trainflow run`)."""
    out = summary(name, run_id, {**metrics, **trained.summary()}, registered)
    lines = [f"# {name}: {HEADLINES[registered.outcome].format(alias=registered.alias)}", "",
             "| metric | value |", "|---|---|", *[f"| {k} | {shown(v, k)} |" for k, v in out.metrics.items()],
             "", registered.line() + ".", "", link("run", run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "summary"), description="training summary")
    rows = [rounded_row(h) for h in trained.epochs()]
    create_table_artifact(rows, key=artifact_key(name, "epochs"), description="per-epoch metrics")
    return out
