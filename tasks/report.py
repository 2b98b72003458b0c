"""Report: a Prefect markdown summary of the run and a table of its per-epoch metrics."""

from __future__ import annotations

import re

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.refs import TrainedRef

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


def summary(name: str, run_id: str, metrics: dict, registered: dict, **extra) -> dict:
    """What every command prints (`--json`): the run, its metrics, the registered model and the gate."""
    return {"run_id": run_id, "experiment": name, "metrics": metrics, "model_uri": registered["model_uri"],
            "registered_model": registered["registered_model"], "version": registered["version"],
            "alias": registered["alias"], "gate": registered["gate"], **extra, "mlflow_url": run_url(run_id)}


def registration(registered: dict) -> str:
    """The sentence every summary gives about the registered model and its gate."""
    gate = registered["gate"]
    return (f"Registered as `{registered['registered_model']}` version {registered['version']} with alias "
            f"`@{registered['alias']}` (gate {'passed' if gate['passed'] else 'failed'}: {gate['reason']}).")


def link(what: str, run_id: str) -> str:
    """A markdown link to the run in the MLflow UI, e.g. `MLflow run: [id](url)`."""
    return f"MLflow {what}: [{run_id}]({run_url(run_id)})"


def rounded(values: dict, keys, places: int = 4) -> dict:
    """{key: value rounded to `places`} for each of `keys`; None where `values` has none."""
    return {k: round(values[k], places) if values.get(k) is not None else None for k in keys}


@task(name="report")
def report(name: str, run_id: str, trained: TrainedRef, metrics: dict, registered: dict) -> dict:
    """-> the run's summary (as `trainflow run --json` prints it)."""
    gate = registered["gate"]
    out = summary(name, run_id, {**metrics, **trained.summary()}, registered)
    lines = [f"# {name}: {'promoted to @' + registered['alias'] if gate['passed'] else 'not promoted'}", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in out["metrics"].items()]
    lines += ["", registration(registered), "", link("run", run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "summary"), description="training summary")
    rows = [{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()} for h in trained.epochs()]
    create_table_artifact(rows, key=artifact_key(name, "epochs"), description="per-epoch metrics")
    return out
