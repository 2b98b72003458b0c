"""Evaluate: test-split metrics, confusion matrix and per-class report, logged to MLflow."""

from __future__ import annotations

from prefect import task

from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.config import PipelineConfig
from trainlib.data.sources import load_dataset
from trainlib.data.split import load_manifest
from trainlib.models import load_model


@task(name="evaluate")
def evaluate(config: PipelineConfig, dataset: dict, manifest: dict, trained: dict, run_id: str) -> dict:
    """-> test_* metrics (loss, accuracy, macro precision/recall/F1)."""
    ds, model = load_dataset(dataset["path"]), load_model(trained["model"])[0]
    result = recipe.test(config, model, ds, load_manifest(manifest["path"]))
    metrics = result.summary("test_")
    log = RunLogger(run_id)
    log.log_metrics(metrics, step=trained["stopped_epoch"])
    log.log_figure(plots.confusion(result.confusion, ds.classes), "confusion_matrix.png")
    log.log_dict(result.report, "classification_report.json")
    return metrics
