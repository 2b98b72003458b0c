"""Transfer learning stages: fetch the source model (registry, file or torch cache), check it fits the new
data and record where it came from; and the report of the built-in demonstration."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.artifacts import create_table_artifact

from tasks import tracking
from tasks.chain.refs import DatasetRef, SourceRef, StatsRef
from tasks.chain.report import artifact_key
from tasks.registry.model_ref import download_source
from tasks.results import SourceRun
from tasks.summaries import Transfer
from tasks.wording import rounded_row
from trainlib import plots, recipe
from trainlib.config import PipelineConfig
from trainlib.transfer import STRATEGIES, Transplanted, load_source, transplant


@task(name="fetch-source")
def fetch_source(source: str, workspace: str) -> SourceRef:
    """The source model as a local file, with its architecture and lineage."""
    lineage: dict = {"source_run_id": None, "source_version": None}
    if source.startswith(("models:/", "runs:/")):
        path, lineage = download_source(source, Path(workspace) / "source")
    else:
        path = source  # a file, or torchvision:<name> (read from the local torch cache)
    loaded = load_source(path)
    return SourceRef(source, str(path), loaded.spec["name"], loaded.spec["options"],
                     tuple(loaded.classes) if loaded.classes else None, **lineage)


@task(name="check-source")
def check_source(config: PipelineConfig, source: SourceRef, dataset: DatasetRef, stats: StatsRef,
                 run_id: str) -> Transplanted:
    """Fit the source's weights into the new model once before training (a mismatch fails here, naming it)
    and record the lineage on the run."""
    model = recipe.build_model(config, dataset.load(), stats.load())
    strategy = config.transfer.strategy
    report = transplant(model, load_source(source.path)) if STRATEGIES[strategy].copies_weights else \
        Transplanted([], [], [f"everything ({strategy}: the source's architecture only)"])
    log = tracking.RunLogger(run_id)
    log.set_tags({"transfer.source": source.uri, "transfer.strategy": config.transfer.strategy,
                  "transfer.source_run_id": source.source_run_id or "",
                  "transfer.source_version": source.source_version or "",
                  "transfer.source_classes": ",".join(source.classes or []),
                  "transfer.copied": len(report.copied), "transfer.adapted": "; ".join(report.adapted),
                  "transfer.new": "; ".join(report.new)})
    log.log_dict(asdict(report), "transfer_weights.json")
    return report


def _first_epoch(history: list[dict], accuracy: float) -> int | None:
    return next((h["epoch"] for h in history if h.get("val_accuracy", 0) >= accuracy), None)


@task(name="transfer-report")
def transfer_report(name: str, run_id: str, source: SourceRun, runs: dict[str, Transfer],
                    workspace: str) -> list[dict[str, Any]]:
    """The demo's table and plot on its run: test accuracy, epochs and training time of the source and of each
    strategy, and the epoch at which each first reached the best validation accuracy scratch ever reached. -> the
    table's rows, column -> cell (the report's JSON, made here)."""
    histories = {s: json.loads(Path(r.transfer.history).read_text()) for s, r in runs.items()}
    bar = max((h.get("val_accuracy", 0) for h in histories.get("scratch", [])), default=None)
    rows = [{"run": f"source: {source.uri}", "test_accuracy": source.test_accuracy,
             "best_epoch": int(source.best_epoch), "train_seconds": source.train_seconds,
             "epochs_to_scratch_best_val": None, "run_id": source.run_id}]
    for strategy, r in runs.items():
        m = r.run.metrics
        rows.append({"run": strategy, "test_accuracy": m.get("test_accuracy"), "best_epoch": m.get("best_epoch"),
                     "train_seconds": m.get("train_seconds"),
                     "epochs_to_scratch_best_val": _first_epoch(histories[strategy], bar) if bar else None,
                     "run_id": r.run.run_id})
    rows = [rounded_row(row) for row in rows]
    log = tracking.RunLogger(run_id)
    log.log_metrics({f"{r['run']}_{k}": r[k] for r in rows[1:] for k in ("test_accuracy", "best_epoch")
                     if r[k] is not None}, step=0)
    table = Path(workspace) / "transfer_demo.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    log.log_artifact(str(table))
    log.log_figure(plots.transfer_comparison(rows), "transfer_demo.png")
    create_table_artifact(rows, key=artifact_key(name, "transfer-demo"), description="source, transfer and scratch")
    return rows


@task(name="registered-source")
def registered_source(name: str, alias: str) -> SourceRun | None:
    """A registered model to reuse as the demo's source, with its run's figures; None if there is none."""
    client = tracking.client()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return SourceRun(f"models:/{name}@{alias}", version.run_id, metrics.get("test_accuracy"), metrics.get("best_epoch"),
                     metrics.get("train_seconds"))
