"""The model card of a registered version (trainlib/card.py), gathered from what its run logged: made at
registration (the version's description in the MLflow registry, `model_card.html` on the run) and by `trainflow
card`. The sections a person writes (intended use, limitations) are tags of the registered model, so every version's
card carries them."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from tasks import tracking
from tasks.chain.report import run_url
from tasks.registry import aliases, outcomes
from tasks.registry.model_ref import ModelRef, registered
from trainlib import card as cards
from trainlib import plots
from trainlib.config import PipelineConfig, flatten, reference

HTML = "model_card.html"
WRITTEN = {"intended_use": "card.intended_use", "limitations": "card.limitations"}  # registered-model tags
DESCRIPTION_LIMIT = 5000  # characters: MLflow's model-version description column (String(5000))
COST = ("train_wall_seconds", "train_cpu_seconds", "stopped_epoch", "train_peak_memory_mb",
        "train_peak_gpu_memory_mb", "train_shared")
SEEDS = ("split.seed", "training.seed", "training.seeds.init", "training.seeds.order", "training.seeds.augment",
         "training.seeds.dropout")


def _artifact(run_id: str, path: str, folder: str) -> Path | None:
    with contextlib.suppress(MlflowException, OSError):
        return Path(tracking.client().download_artifacts(run_id, path, folder))
    return None


def gather(ref: ModelRef) -> cards.Card:
    """The card of `ref` from its run: params, metrics, tags and the logged test outcomes, report and manifest."""
    client, notes = tracking.client(), []
    run = client.get_run(ref.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    version = client.get_model_version(ref.name, str(ref.version))
    with tempfile.TemporaryDirectory() as folder:
        report = _artifact(ref.run_id, "classification_report.json", folder)
        manifest = _artifact(ref.run_id, "split_manifest.csv", folder)
        per_class = _per_class(json.loads(report.read_text())) if report else []
        classes = [c.name for c in per_class]
        counts = cards.split_counts(pd.read_csv(manifest), classes) if manifest else ()
    found = outcomes.of_run(ref.run_id)
    scored = found is not None and found.labels is not None and bool(classes)  # classes: the report's
    if not scored:
        notes.append("The run logged no per-sample test predictions: no intervals, confusions or reliability bins.")
    intervals = cards.bootstrap(found.labels, found.predicted, found.confidence, len(classes)) if scored else {}
    shown = {k: cards.Estimate(metrics[k], *intervals.get(k, (None, None))) for k in cards.SHOWN if k in metrics}
    shown |= {k: cards.Estimate(metrics[k]) for k in ("test_loss", "test_precision", "test_recall") if k in metrics}
    calibration = {k: metrics[k] for k in ("test_ece", "temperature", "test_ece_uncalibrated") if k in metrics}
    size = ((int(metrics["model_parameters"]), int(metrics["model_bytes"])) if "model_parameters" in metrics
            else None)
    return cards.Card(
        ref.name, ref.version, sorted(version.aliases or ()), ref.run_id, run_url(ref.run_id),
        cards.TrainedOn(params.get("data.source"), _set(params.get("data.path")), tags.get("dataset.digest"),
                        tuple(classes), counts, {k: params[k] for k in SEEDS if _set(params.get(k)) is not None}),
        _changes(params), size, shown, per_class,
        cards.most_confused(found.labels, found.predicted, classes) if scored and classes else [],
        calibration, cards.reliability(found.correct, found.confidence) if scored else [],
        {k: metrics[k] for k in COST if k in metrics}, _lineage(run, version), _history(ref.name, ref.version),
        *_written(ref.name), notes, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"))


def _set(param: str | None) -> str | None:
    """A param's value, None where the config left it unset (MLflow keeps None as the text "None")."""
    return None if param in (None, "None") else param


def _per_class(report: dict) -> list[cards.ClassScore]:
    """The classes of a classification report (sklearn's shape), without its averages."""
    return [cards.ClassScore(k, v["precision"], v["recall"], v["f1-score"], int(v["support"]))
            for k, v in report.items() if isinstance(v, dict) and k not in ("macro avg", "weighted avg", "micro avg")]


def _changes(params: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """The run's config keys that differ from the defaults for its data (the name, model and class column follow the
    data), with what each means (the config reference)."""
    data = {k: params[f"data.{k}"] for k in ("source", "path") if params.get(f"data.{k}") not in (None, "None")}
    try:
        default = PipelineConfig.model_validate({"data": data})
    except ValueError:  # a source this version of trainflow no longer reads: the plain defaults
        default = PipelineConfig()
    defaults = {k: str(v) for k, v in flatten(default.model_dump(mode="json")).items()}
    meanings = {key: description for key, _, description in reference()}
    return cards.differences(dict(params), defaults, meanings)


def _lineage(run, version) -> list[tuple[str, str]]:
    """Where the version came from: the run above its run, a transfer source, an ensemble's members, the code, the
    gate's decision."""
    tags, out = run.data.tags, []
    if parent := tags.get("mlflow.parentRunId"):
        kind = "run"
        with contextlib.suppress(MlflowException):  # a parent deleted since
            kind = tracking.client().get_run(parent).data.tags.get("trainflow.kind", "run")
        out.append(("parent run", f"{parent} (a {kind})"))
    if source := tags.get("transfer.source"):
        out.append(("transfer source", source))
    members = tracking.client().search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.`trainflow.kind` = 'member'")
    if members:
        out.append(("ensemble members", ", ".join(sorted(f"{m.info.run_name} ({m.info.run_id})" for m in members))))
    if commit := tags.get("mlflow.source.git.commit"):
        dirty = " (with uncommitted changes)" if tags.get("trainflow.code.dirty") == "true" else ""
        out.append(("code", f"git {commit[:12]}{dirty}, trainflow {tags.get('trainflow.version.trainflow', '?')}, "
                            f"torch {tags.get('trainflow.version.torch', '?')}"))
    out.append(("gate", version.tags.get("gate_reason", "not recorded")))
    return out


def _history(name: str, version: int) -> list[str]:
    return [f"{m.when[:19]}Z @{m.alias}: version {m.from_version or '-'} -> {m.to_version} ({m.by}: {m.reason})"
            for m in aliases.history(name) if version in (m.from_version, m.to_version)]


def _written(name: str) -> tuple[str | None, str | None]:
    tags = registered(name).tags
    return tags.get(WRITTEN["intended_use"]), tags.get(WRITTEN["limitations"])


def write(name: str, intended_use: str | None, limitations: str | None) -> None:
    """Set the sections a person writes, for every version of `name` (registered-model tags)."""
    client = tracking.client()
    for key, text in (("intended_use", intended_use), ("limitations", limitations)):
        if text is not None:
            client.set_registered_model_tag(name, WRITTEN[key], text)


def description(card: cards.Card) -> str:
    """The card as the version's description: the whole markdown, or without the per-class table when longer than
    MLflow's column holds (the HTML artifact keeps it)."""
    text = card.markdown()
    if len(text) > DESCRIPTION_LIMIT:
        text = cards.Card(**{**card.__dict__, "per_class": [], "notes": [*card.notes, f"Per-class table: {HTML}."]}
                          ).markdown()
    return text[:DESCRIPTION_LIMIT]


def reliability_png(card: cards.Card) -> bytes | None:
    if not card.reliability:
        return None
    buffer = io.BytesIO()
    plots.reliability(card.reliability).savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def publish_or_say(ref: ModelRef) -> None:
    """`publish` at registration: the version is registered and its alias moved by now, so a card that cannot be made
    (a store that fails, a record edited by hand) does not fail the flow: the version's `card_error` tag and a warning
    say why, and `trainflow card` makes it later."""
    try:
        publish(ref)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the registration stands; said, not swallowed
        reason = f"{type(exc).__name__}: {exc}"[:500]
        logging.getLogger("trainflow").warning("%s: no model card (%s); `trainflow card` makes it later",
                                               ref.describe(), reason)
        with contextlib.suppress(MlflowException):
            tracking.client().set_model_version_tag(ref.name, str(ref.version), "card_error", reason)


def publish(ref: ModelRef) -> cards.Card:
    """Make the card of `ref` and put it where users look: the version's description and the run's HTML."""
    card = gather(ref)
    tracking.client().update_model_version(ref.name, str(ref.version), description=description(card))
    tracking.RunLogger(ref.run_id).log_text(card.html(reliability_png(card)), HTML)
    return card
