"""Evaluate: test-split metrics, confusion matrix and per-class report, logged to MLflow."""

from __future__ import annotations

from prefect import task

from tasks.chain.refs import DatasetRef, ManifestRef, TrainedRef
from tasks.registry import outcomes
from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.calibration import uncalibrated_ece
from trainlib.config import PipelineConfig
from trainlib.data.split import indices


@task(name="evaluate")
def evaluate(config: PipelineConfig, dataset: DatasetRef, manifest: ManifestRef, trained: TrainedRef,
             run_id: str) -> dict[str, float]:
    """-> test_* metrics (loss, accuracy, macro precision/recall/F1, ECE; a calibrated model's ECE before its
    temperature too)."""
    ds, model = dataset.load(), trained.load()
    result = recipe.test(config, model, ds, manifest.load())
    metrics = result.summary("test_") | uncalibrated_ece(result.probabilities, result.labels, float(model.temperature))
    log = RunLogger(run_id)
    log.log_metrics(metrics, step=trained.stopped_epoch)
    log.log_figure(plots.confusion(result.confusion, ds.classes), "confusion_matrix.png")
    log.log_dict(result.report, "classification_report.json")
    outcomes.log(log, dataset.digest, indices(manifest.load(), "test"), result.probabilities, result.labels,
                 trained.model)
    return metrics
