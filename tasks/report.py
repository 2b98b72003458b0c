"""Report: a Prefect markdown summary of the run and a table of its per-epoch metrics."""

from __future__ import annotations

import numbers
import re

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.refs import TrainedRef
from tasks.register import NOT_REGISTERED

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
    """What every command prints (`--json`): the run, its metrics, the registered model and the gate.
    registered_model, version (an int), alias and gate are None when nothing was registered (--no-register)."""
    return {"run_id": run_id, "experiment": name, "metrics": metrics, "model_uri": registered["model_uri"],
            "registered_model": registered["registered_model"], "version": registered["version"],
            "alias": registered["alias"], "gate": registered["gate"], **extra, "mlflow_url": run_url(run_id)}


def registration(registered: dict) -> str:
    """The line every summary gives about the registration, e.g. `registered digits-cnn version 4: kept as
    challenger (not better than version 3's 1.0000 by 0.001)`, or why nothing was registered."""
    if registered["gate"] is None:
        return f"{NOT_REGISTERED}; the model is logged to the run as {registered['model_uri']}"
    name, version, gate = registered["registered_model"], registered["version"], registered["gate"]
    return f"registered {name} version {version}: {gate['reason']}"


def outcome(registered: dict) -> str:
    """The gate's verdict in a word (tasks/register.py OUTCOMES), or `not_registered`."""
    return registered["gate"]["outcome"] if registered["gate"] else "not_registered"


def link(what: str, run_id: str) -> str:
    """A markdown link to the run in the MLflow UI, e.g. `MLflow run: [id](url)`."""
    return f"MLflow {what}: [{run_id}]({run_url(run_id)})"


# One rounding rule for every table (CLI, Prefect artifacts, CSV): hyperparameters such as learning rates
# to 3 significant digits, times to 1 decimal, epochs as whole numbers, every other float (a metric: accuracy,
# loss, F1) to 4 decimals. Summaries' --json keeps full precision.
def _is_hyperparameter(key: str) -> bool:
    return "." in key or key.endswith("lr")  # config keys (optimizer.lr, model.dropout) and lr, backbone_lr


def rounded(value, key: str = ""):
    """`value` (of the column `key`) rounded by the one rule; anything but a float as it is."""
    if not isinstance(value, numbers.Real) or isinstance(value, numbers.Integral) or value != value:  # NaN stays
        return value
    value = float(value)  # numpy's too
    if key.endswith(("seconds", "per_second")):
        return round(value, 1)
    if "epoch" in key and value.is_integer():  # MLflow keeps best_epoch as a float metric
        return int(value)
    if _is_hyperparameter(key):
        return float(f"{value:.3g}")
    return round(value, 4)


def shown(value, key: str = "") -> str:
    """`value` as table text: metrics always with 4 decimals (1.0000, never 1.0), '-' for none."""
    value = rounded(value, key)
    if value is None:
        return "-"
    if isinstance(value, float) and not _is_hyperparameter(key):
        return f"{value:.1f}" if key.endswith(("seconds", "per_second")) else f"{value:.4f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cells(row: dict, keys) -> list[str]:
    """The row's `keys` as table text (CLI tables and markdown rows alike)."""
    return [shown(row.get(k), k) for k in keys]


def markdown_row(row: dict, keys) -> str:
    return "| " + " | ".join(cells(row, keys)) + " |"


def rounded_row(row: dict, keys=None) -> dict:
    """The row with each value rounded by its key (only `keys`, None where the row has none, if given)."""
    if keys is None:
        return {k: rounded(v, k) for k, v in row.items()}
    return {k: rounded(row.get(k), k) for k in keys}


HEADLINES = {  # the Prefect summary's title, by the gate's outcome
    "promoted": "promoted to @{alias}", "not_better": "kept as challenger",
    "below_minimum": "kept as challenger (below the gate)", "not_registered": "not registered"}


@task(name="report")
def report(name: str, run_id: str, trained: TrainedRef, metrics: dict, registered: dict) -> dict:
    """-> the run's summary (as `trainflow run --json` prints it)."""
    out = summary(name, run_id, {**metrics, **trained.summary()}, registered)
    lines = [f"# {name}: {HEADLINES[outcome(registered)].format(alias=registered['alias'])}", "",
             "| metric | value |", "|---|---|", *[f"| {k} | {shown(v, k)} |" for k, v in out["metrics"].items()],
             "", registration(registered) + ".", "", link("run", run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "summary"), description="training summary")
    rows = [rounded_row(h) for h in trained.epochs()]
    create_table_artifact(rows, key=artifact_key(name, "epochs"), description="per-epoch metrics")
    return out

