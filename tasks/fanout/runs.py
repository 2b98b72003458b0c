"""Fan-out stages: one tuning trial, one comparison variant. Each trains in its own MLflow run nested
under the study's (or comparison's) parent run, with an explicit run id: parallel tasks never share
an active run."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.chain.refs import DatasetRef, ManifestRef, SourceRef, StatsRef
from tasks.record import open_run
from tasks.results import TrialRun, VariantRun
from tasks.tuning.storage import open_study
from trainlib import recipe
from trainlib.calibration import uncalibrated_ece
from trainlib.config import PipelineConfig
from trainlib.measures import Trained, derived
from trainlib.models import parameter_count, save_model
from trainlib.tuning import PruningCallback, SearchConfig

# How often a trial's or variant's per-epoch metrics are sent while it trains (tracking.RunLogger): parallel child
# runs beside each other's training threads make every MLflow call slow (the GIL), so they are sent in batches.
LIVE_SECONDS = 10.0


def load_data(config: PipelineConfig, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef):
    """-> (dataset, manifest, normalization statistics) for `config`: refitted when it varies the method."""
    ds, m = dataset.load(), manifest.load()
    if config.normalize.method == stats.method:
        return ds, m, stats.load()
    return ds, m, recipe.fit_normalizer(ds, m, config.normalize, config.data.workers)


def child_run(config: PipelineConfig, name: str, parent_run_id: str, kind: str, overrides: dict[str, Any], digest: str,
              tags: dict | None = None) -> str:
    """A trial's, variant's or member's run, nested under the parent, recording its whole config, what it
    changes (`overrides`), the dataset, the process that trains it and any other `tags`."""
    return open_run(config, name, kind, parent_run_id, tags={
        "trainflow.overrides": json.dumps(overrides, default=str), "dataset.digest": digest,
        "trainflow.process": f"{socket.gethostname()}:{os.getpid()}", **(tags or {})})


@task(name="trial", cache_policy=NO_CACHE)
def trial(config: PipelineConfig, params: dict[str, Any], search: SearchConfig, study_name: str, trial_id: int,
          number: int, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef, parent_run_id: str) -> TrialRun:
    """Train one trial's config on the train split, scored on validation; pruned trials stop early."""
    run_id = child_run(config, f"trial {number}", parent_run_id, "trial", params, dataset.digest)
    started = time.perf_counter()
    with tracking.finishing(run_id) as outcome, tracking.RunLogger(run_id, every=LIVE_SECONDS) as log:
        handle = optuna.trial.Trial(open_study(search, study_name, config.training.epochs), trial_id)
        handle.set_user_attr("run_id", run_id)  # the study (in any storage) knows where each trial is tracked
        pruning = PruningCallback(handle, search.metric)  # reports each epoch: Optuna takes reports of one objective
        try:
            model, fit = recipe.train(config, *load_data(config, dataset, manifest, stats),
                                      callbacks=[] if search.second_metric else [pruning], logger=log)
        except optuna.TrialPruned:
            log.set_tags({"trial.state": "pruned"})
            outcome["status"] = "KILLED"
            return TrialRun(number, run_id, params, "pruned", None, pruning.epoch, None,
                            time.perf_counter() - started)
        # early stopping watches the search metric (see trial_base): its best is the trial's score
        costs = fit.cost.metrics() | {"train_seconds": fit.train_seconds, "model_parameters": parameter_count(model)}
        log.log_metrics({f"best_{search.metric}": fit.best_value} | costs, step=fit.stopped_epoch)
        log.set_tags({"trial.state": "complete"})
    return TrialRun(number, run_id, params, "complete", fit.best_value, fit.stopped_epoch, fit.best_epoch,
                    time.perf_counter() - started, costs[search.second_metric] if search.second_metric else None)


@task(name="variant", cache_policy=NO_CACHE)
def variant(config: PipelineConfig, label: str, repeat: int, name: str, overrides: dict[str, Any], dataset: DatasetRef,
            manifest: ManifestRef, stats: StatsRef, parent_run_id: str, workspace: str,
            source: SourceRef | None = None) -> VariantRun:
    """Train and test repeat `repeat` of one comparison variant, recorded as a training run is (per-epoch metrics,
    best and stopped epoch, the model file as checkpoints/model.pt; the MLflow model only once registered)."""
    run_id = child_run(config, name, parent_run_id, "variant", overrides, dataset.digest,
                       {"trainflow.variant": label, "trainflow.repeat": repeat}
                       | ({"transfer.source": source.uri} if source else {}))
    started = time.perf_counter()
    ws = Path(workspace) / run_id
    ws.mkdir(parents=True, exist_ok=True)
    with tracking.finishing(run_id), tracking.RunLogger(run_id, every=LIVE_SECONDS) as log:
        ds, m, norm = load_data(config, dataset, manifest, stats)
        model, fit = recipe.train(config, ds, m, norm, logger=log, source=source.path if source else None)
        seconds = time.perf_counter() - started
        tested = recipe.test(config, model, ds, m)
        metrics = tested.summary("test_") | uncalibrated_ece(tested.probabilities, tested.labels,
                                                             float(model.temperature))
        best = fit.history[(fit.best_epoch or fit.stopped_epoch) - 1]
        metrics |= {"best_val_loss": best.get("val_loss"), "best_val_accuracy": best.get("val_accuracy"),
                    "best_epoch": fit.best_epoch or fit.stopped_epoch, "stopped_epoch": fit.stopped_epoch,
                    "train_seconds": fit.train_seconds} | fit.cost.metrics() | fit.averaged
        metrics |= fit.calibration.metrics() if fit.calibration else {}
        metrics["test_accuracy_per_cpu_minute"] = metrics["test_accuracy"] / max(fit.cost.cpu_seconds / 60, 1e-9)
        fitted = {s: recipe.test(config, model, ds, m, s).accuracy for s in ("train", "val")}  # eval mode
        metrics |= {"train_accuracy_eval": fitted["train"]} | derived(Trained(fit, model, fitted["train"],
                                                                               fitted["val"]))
        log.log_metrics({k: v for k, v in metrics.items() if v is not None} | {"wall_seconds": seconds},
                        step=fit.stopped_epoch)
        log.set_tags({"stop_reason": fit.stop_reason})
        save_model(ws / "model.pt", model, classes=ds.classes, config=config.model_dump(mode="json"))
        log.log_artifact(str(ws / "model.pt"), "checkpoints")  # architecture + weights: inspectable, a transfer source
    (ws / "curves.json").write_text(json.dumps({"history": fit.history, "lrs": fit.lrs,
                                                "updates_per_epoch": fit.updates_per_epoch}))
    return VariantRun(label, repeat, name, run_id, overrides, metrics, fit.stopped_epoch, fit.best_epoch, seconds,
                      str(ws / "model.pt"), str(ws / "curves.json"))
