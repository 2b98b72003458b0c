"""Fan-out stages: one tuning trial, one comparison variant. Each trains in its own MLflow run nested
under the study's (or comparison's) parent run, with an explicit run id: parallel tasks never share
an active run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from trainlib import recipe
from trainlib.config import PipelineConfig, flatten
from trainlib.data.normalize import NormStats
from trainlib.data.sources import load_dataset
from trainlib.data.split import load_manifest
from trainlib.models import save_model
from trainlib.tuning import PruningCallback, SearchConfig, objective, open_study

# Called with each finished trial's or variant's result in this process (the CLI's progress bar).
LISTENERS: list = []


def _finished(result: dict) -> dict:
    for listener in LISTENERS:
        listener(result)
    return result


def _data(config: PipelineConfig, dataset: dict, manifest: dict, norm: dict):
    ds, m = load_dataset(dataset["path"]), load_manifest(manifest["path"])
    if config.normalize.method == norm["method"]:
        return ds, m, NormStats.load(norm["path"])
    return ds, m, recipe.fit_normalizer(ds, m, config.normalize)  # this trial varies the method


def _child(config: PipelineConfig, name: str, parent_run_id: str, kind: str, overrides: dict) -> str:
    return tracking.start_run(config.name, name, flatten(config), {
        "trainflow.kind": kind, "trainflow.overrides": json.dumps(overrides, default=str)}, parent_run_id)


@task(name="trial", cache_policy=NO_CACHE)
def trial(config: PipelineConfig, params: dict, search: SearchConfig, study_name: str, trial_id: int, number: int,
          dataset: dict, manifest: dict, norm: dict, parent_run_id: str) -> dict:
    """Train one trial's config on the train split, scored on validation; pruned trials stop early.
    -> {number, state (complete | pruned), value, epochs, best_epoch, seconds, run_id, params}."""
    run_id = _child(config, f"trial {number}", parent_run_id, "trial", params)
    log = tracking.RunLogger(run_id)
    study = open_study(search, study_name, config.training.epochs)
    handle = optuna.trial.Trial(study, trial_id)
    handle.set_user_attr("run_id", run_id)  # the study (in any storage) knows where each trial is tracked
    pruning = PruningCallback(handle, search.metric)
    started = time.perf_counter()
    out = {"number": number, "run_id": run_id, "params": params}
    try:
        ds, m, stats = _data(config, dataset, manifest, norm)
        _, fit = recipe.train(config, ds, m, stats, callbacks=[pruning], logger=log)
    except optuna.TrialPruned:
        log.set_tags({"trial.state": "pruned"})
        tracking.finish_run(run_id, status="KILLED")
        return _finished(out | {"state": "pruned", "value": None, "epochs": pruning.epoch, "best_epoch": None,
                                "seconds": time.perf_counter() - started})
    except BaseException as exc:
        tracking.finish_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    value = objective(fit.history, search.metric, search.goal)
    log.log_metrics({f"best_{search.metric}": value}, step=fit.stopped_epoch)
    log.set_tags({"trial.state": "complete"})
    tracking.finish_run(run_id)
    return _finished(out | {"state": "complete", "value": value, "epochs": fit.stopped_epoch,
                            "best_epoch": fit.best_epoch, "seconds": time.perf_counter() - started})


@task(name="variant", cache_policy=NO_CACHE)
def variant(config: PipelineConfig, label: str, overrides: dict, dataset: dict, manifest: dict, norm: dict,
            parent_run_id: str, workspace: str) -> dict:
    """Train and test one comparison variant. -> {label, run_id, metrics, epochs, best_epoch, seconds,
    model, history, lrs} (the last three are files)."""
    run_id = _child(config, label, parent_run_id, "variant", overrides)
    log = tracking.RunLogger(run_id)
    started = time.perf_counter()
    try:
        ds, m, stats = _data(config, dataset, manifest, norm)
        model, fit = recipe.train(config, ds, m, stats, logger=log)
        seconds = time.perf_counter() - started
        metrics = recipe.test(config, model, ds, m).summary("test_")
    except BaseException as exc:
        tracking.finish_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    best = fit.history[(fit.best_epoch or fit.stopped_epoch) - 1]
    metrics |= {"best_val_loss": best.get("val_loss"), "best_val_accuracy": best.get("val_accuracy")}
    log.log_metrics({**metrics, "wall_seconds": seconds}, step=fit.stopped_epoch)
    tracking.finish_run(run_id)
    ws = Path(workspace) / run_id
    ws.mkdir(parents=True, exist_ok=True)
    save_model(ws / "model.pt", model, classes=ds.classes, config=config.model_dump(mode="json"))
    (ws / "history.json").write_text(json.dumps({"history": fit.history, "lrs": fit.lrs,
                                                 "updates_per_epoch": fit.updates_per_epoch}))
    return _finished({"label": label, "run_id": run_id, "overrides": overrides, "metrics": metrics,
                      "epochs": fit.stopped_epoch, "best_epoch": fit.best_epoch, "seconds": seconds,
                      "model": str(ws / "model.pt"), "curves": str(ws / "history.json")})
