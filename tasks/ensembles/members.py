"""Ensemble members. Each trains (or, for voting, loads a registered model) in its own MLflow run nested
under the ensemble's, and writes its model file and its class probabilities on every split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from tasks.fanout.runs import child_run, load_data
from tasks.registry.model_ref import check_member
from tasks.results import BoostStep, MemberRun
from trainlib import recipe
from trainlib.boosting import samme
from trainlib.config import PipelineConfig
from trainlib.data.batches import subset
from trainlib.data.split import SPLITS, indices
from trainlib.errors import ConfigError
from trainlib.export import EXPORTING, Program, export
from trainlib.metrics import from_logits
from trainlib.models import save_model
from trainlib.resample import Resample, folds

PROBABILITIES = "probabilities.npz"  # one (N, K) array per split (train, val, test) and, for stacking, oof


def _metrics(probs: dict[str, np.ndarray], labels: np.ndarray, manifest, classes: list[str]) -> dict[str, float]:
    """val_* and test_* (loss, accuracy, macro precision/recall/F1) from a member's probabilities."""
    out = {}
    for split in ("val", "test"):
        if split in probs:
            y = torch.from_numpy(labels[indices(manifest, split)].copy())
            logp = torch.log(torch.from_numpy(probs[split]).clamp_min(1e-12))
            out |= from_logits(logp, y, classes).summary(f"{split}_")
    return out


def _out_of_fold(config: PipelineConfig, data: tuple, rows: np.ndarray, k: int, seed: int, log) -> np.ndarray:
    """Probabilities over the train split `rows`, each from a copy of the member fitted without its fold."""
    ds, manifest, stats = data
    oof = np.zeros((len(rows), len(ds.classes)), dtype=np.float32)
    position = {r: i for i, r in enumerate(rows)}
    for fold, (fit_rows, held) in enumerate(folds(ds.labels.numpy(), rows, k, seed), 1):
        model, fit = recipe.train(config, ds, manifest, stats, rows=fit_rows)
        oof[[position[r] for r in held]] = recipe.probabilities(config, model, ds, held)
        log.log_metrics({f"fold_best_{fit.monitor}": fit.best_value, "fold_epochs": fit.stopped_epoch}, step=fold)
    return oof


@task(name="member", cache_policy=NO_CACHE)
def member(config: PipelineConfig, name: str, overrides: dict[str, Any], resample: Resample | None,
           oof: dict[str, int] | None,
           dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef, parent_run_id: str,
           workspace: str) -> MemberRun:
    """Train one member on the train split, or on the rows `resample` draws from it; with `oof` ({folds,
    seed}) first its out-of-fold probabilities over the train split."""
    run_id = child_run(config, name, parent_run_id, "member", overrides, dataset.digest)
    log, started = tracking.RunLogger(run_id), time.perf_counter()
    ws = Path(workspace) / run_id
    ws.mkdir(parents=True, exist_ok=True)
    with tracking.finishing(run_id):
        ds, m, norm = load_data(config, dataset, manifest, stats)
        data = ds, m, norm = recipe.labelled(ds, m), m, norm  # the labels trained on (label noise)
        labels, train_rows = ds.labels.numpy(), indices(m, "train")
        rows = resample.draw(labels, train_rows) if resample else None
        if rows is not None:
            log.log_metrics({"resample_rows": len(rows), "resample_unique_rows": len(np.unique(rows)),
                             "resample_classes": len(np.unique(labels[rows]))}, step=0)
        probs = {"oof": _out_of_fold(config, data, train_rows, oof["folds"], oof["seed"], log)} if oof else {}
        model, fit = recipe.train(config, ds, m, norm, rows=rows, logger=log)
        probs |= {s: recipe.probabilities(config, model, ds, indices(m, s)) for s in SPLITS if (m["split"] == s).any()}
        metrics = _metrics(probs, labels, m, ds.classes)
        if "oof" in probs:
            metrics["oof_accuracy"] = float((probs["oof"].argmax(1) == labels[train_rows]).mean())
        seconds = time.perf_counter() - started
        log.log_metrics({**metrics, **fit.averaged, **fit.cost.metrics(), "wall_seconds": seconds},
                        step=fit.stopped_epoch)
    save_model(ws / "model.pt", model, classes=ds.classes, config=config.model_dump(mode="json"))
    np.savez(ws / PROBABILITIES, **probs)
    return MemberRun(name, run_id, str(ws / "model.pt"), str(ws / PROBABILITIES), metrics, fit.stopped_epoch,
                     seconds, None)


@task(name="check-registered")
def check_registered(uris: list[str]) -> None:
    """Every registered-model member exists and is a single trained model (before anything trains)."""
    for uri in uris:
        check_member(uri)


def load_registered(uri: str) -> torch.nn.Module:
    """A registered single model (MLflow pytorch flavor) as a module: raw inputs in, logits out."""
    try:
        with EXPORTING:  # an exported (pt2) program: torch loads one at a time
            return Program(mlflow.pytorch.load_model(uri))
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"ensemble member {uri}: cannot load it as a trained model ({exc}); give a registered "
                          "model trained by `trainflow run`, e.g. models:/digits-cnn@champion") from None


@task(name="registered-member", cache_policy=NO_CACHE)
def registered_member(config: PipelineConfig, name: str, uri: str, dataset: DatasetRef, manifest: ManifestRef,
                      parent_run_id: str, workspace: str) -> MemberRun:
    """Reuse a registered model as a voting member: checked against the data, exported, evaluated on every
    split in its own child run (tagged with the source URI)."""
    ds, m = dataset.load(), manifest.load()
    model = load_registered(uri)
    example = next(subset(ds, np.arange(2), workers=0).batches(2))[0].float()
    try:
        with torch.no_grad():
            classes = model(example).shape[1]
    except Exception as exc:
        raise ConfigError(f"ensemble member {uri}: it does not take this data's inputs of shape "
                          f"{tuple(ds.sample_shape)} ({type(exc).__name__})") from None
    if classes != len(ds.classes):
        raise ConfigError(f"ensemble member {uri}: it predicts {classes} classes; this data has {len(ds.classes)}")
    run_id = tracking.start_run(config.name, name, {"source_model": uri}, {
        "trainflow.kind": "member", "trainflow.source_model": uri, "dataset.digest": dataset.digest}, parent_run_id)
    started, ws = time.perf_counter(), Path(workspace) / run_id
    ws.mkdir(parents=True, exist_ok=True)
    with tracking.finishing(run_id):
        export(model, example, ws / "model.pt2")
        probs = {s: recipe.probabilities(config, model, ds, indices(m, s)) for s in SPLITS if (m["split"] == s).any()}
        metrics = _metrics(probs, ds.labels.numpy(), m, ds.classes)
        seconds = time.perf_counter() - started
        tracking.RunLogger(run_id).log_metrics({**metrics, "wall_seconds": seconds}, step=0)
    np.savez(ws / PROBABILITIES, **probs)
    return MemberRun(name, run_id, str(ws / "model.pt2"), str(ws / PROBABILITIES), metrics, None, seconds, uri)


@task(name="boost-weights", cache_policy=NO_CACHE)
def boost_weights(weights: str | None, trained: MemberRun, dataset: DatasetRef, manifest: ManifestRef,
                  learning_rate: float, workspace: str, round_: int) -> BoostStep:
    """One SAMME step after boosting round `round_`, from its sample `weights` (file; None: uniform): the
    member's vote weight from its weighted error on the train split, and the next round's sample weights
    (file)."""
    m = manifest.load()
    ds = recipe.labelled(dataset.load(), m)  # boosting weighs errors against the labels trained on
    correct = np.load(trained.probabilities)["train"].argmax(1) == ds.labels.numpy()[indices(m, "train")]
    boost = samme(np.load(weights) if weights else np.ones(len(correct)), correct, len(ds.classes), learning_rate)
    path = Path(workspace) / f"weights-{round_ + 1}.npy"
    np.save(path, boost.weights)
    tracking.RunLogger(trained.run_id).log_metrics({"member_weight": boost.alpha,
                                                       "weighted_train_error": boost.error}, step=round_)
    return BoostStep(boost.alpha, boost.error, str(path), boost.stop)
