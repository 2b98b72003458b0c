"""Ensemble stages after the members: combine them into one model (fitting the stacking meta-learner),
evaluate it, log it to MLflow as a pyfunc model and register it through the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from prefect import task

from tasks import tracking
from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from tasks.registry import outcomes
from tasks.registry.register import described, example_inputs, promote
from tasks.results import Combined, MemberRun, Registration
from trainlib import plots, recipe
from trainlib.combine import Ensemble, disagreement, fit_meta, meta_features
from trainlib.config import PipelineConfig, RegisterConfig, override
from trainlib.data.split import indices
from trainlib.ensemble import META_SOURCES, EnsembleConfig
from trainlib.export import export, load_exported
from trainlib.models import load_model
from trainlib.scoring import InputSpec


def _module(path: str) -> torch.nn.Module:
    return load_exported(path) if path.endswith(".pt2") else load_model(path)[0]


def _meta(ensemble: EnsembleConfig, members: list[MemberRun], labels: np.ndarray, manifest) -> tuple:
    """The stacking meta-learner, fitted on the members' out-of-fold train predictions or on validation
    (never on test). -> (meta-learner, the dataset rows it was fitted on)."""
    source = META_SOURCES[ensemble.meta]
    rows = indices(manifest, source.split)
    probs = torch.stack([torch.from_numpy(np.load(m.probabilities)[source.predictions]) for m in members])
    meta = fit_meta(meta_features(probs), torch.from_numpy(labels[rows].copy()), probs.shape[2], ensemble.meta_l2)
    return meta, rows


@task(name="combine")
def combine(config: PipelineConfig, ensemble: EnsembleConfig, members: list[MemberRun], weights: list[float] | None,
            dataset: DatasetRef, manifest: ManifestRef, run_id: str, workspace: str) -> Combined:
    """One model from the trained `members` (with their vote `weights`, if any), exported, and the exported
    program evaluated on val and test."""
    ds, m = dataset.load(), manifest.load()
    log, ws = tracking.RunLogger(run_id), Path(workspace)
    labels = recipe.labelled(ds, m).labels.numpy()  # out of fold: the train labels the members saw
    meta, meta_rows = _meta(ensemble, members, labels, m) if ensemble.combination.learned else (None, None)
    model = Ensemble([_module(x.model) for x in members], ensemble.rule, weights, meta)
    export(model.cpu(), torch.from_numpy(example_inputs(dataset)), ws / "ensemble.pt2")
    # Scored as registered: the exported program read back from its file, on the CPU as pyfunc serves it.
    program, on_cpu, metrics = load_exported(ws / "ensemble.pt2"), override(config, {"training.device": "cpu"}), {}
    for split in ("val", "test"):
        if (m["split"] == split).any():
            result = recipe.test(on_cpu, program, ds, m, split)
            metrics |= result.summary(f"{split}_")
    log.log_metrics(metrics | {"members_trained": len(members)}, step=0)
    log.log_figure(plots.confusion(result.confusion, ds.classes), "confusion_matrix.png")
    log.log_dict(result.report, "classification_report.json")
    outcomes.log(log, dataset.digest, indices(m, "test"), result.probabilities, result.labels,
                 str(ws / "ensemble.pt2"))  # the card's intervals; the gate's McNemar test
    if meta_rows is not None:  # the rows the meta-learner saw, for audit: train (out of fold) or val, never test
        log.log_dict({"split": META_SOURCES[ensemble.meta].split, "rows": meta_rows.tolist()},
                     "stacking_meta_rows.json")
    predictions = np.stack([np.load(x.probabilities)["test"].argmax(1) for x in members])
    votes = [None] * len(members) if meta else weights or [1.0] * len(members)  # stacking: the meta-learner weighs
    about = {"method": ensemble.method, "rule": ensemble.rule, "classes": ds.classes,
             "input_shape": list(ds.sample_shape), "output": "log-probabilities (argmax: class, softmax: "
             "probabilities)", "members": [{"name": x.label, "run_id": x.run_id, "source": x.source,
                                             "weight": w} for x, w in zip(members, votes, strict=True)]}
    (ws / "ensemble.json").write_text(json.dumps(about, indent=2))
    return Combined(str(ws / "ensemble.pt2"), str(ws / "ensemble.json"), metrics, weights,
                    disagreement(predictions).tolist())


@task(name="register-ensemble")
def register_ensemble(name: str, register: RegisterConfig, combined: Combined, dataset: DatasetRef, stats: StatsRef,
                      run_id: str) -> Registration:
    """Log the ensemble as an MLflow pyfunc model (from code) and register it through the gate."""
    example, metadata = described(dataset, stats.load().moments)
    with torch.no_grad():
        output = load_exported(combined.program)(torch.from_numpy(example)).numpy()
    model_uri = tracking.log_ensemble(run_id, combined.program, combined.about, example, output,
                                      metadata)
    return promote(name, register, model_uri, combined.metrics["test_accuracy"], run_id,
                   InputSpec.from_dict(metadata["trainflow"]))
