"""`trainflow rerun RUN_ID`: replay a run from its recorded config, in a new run tagged with the original's id, and
say how its metrics differ. The plan refuses data that changed since (its digest differs) unless allowed; code or
packages that differ are reported, not refused. A rerun registers nothing unless told (--set register.enabled=true):
it checks a result, it does not make a new candidate.

How a run is replayed is its kind's (REPLAYS): a training run through the training pipeline, a comparison's variant
through the same variant task that trained it (so a compare child is reproduced as it was trained).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows import plans, preflight
from flows.common import prepare_data
from flows.training import training_pipeline
from tasks import tracking
from tasks.chain.report import run_url
from tasks.fanout.runs import variant
from tasks.record import Recorded, recorded
from tasks.registry.model_ref import resolve
from tasks.settings import workspace
from tasks.summaries import Rerun
from trainlib.config import PipelineConfig, load_config
from trainlib.errors import ConfigError
from trainlib.registry import Registry

COMPARED = ("test_accuracy", "test_loss", "test_f1", "test_ece", "best_val_accuracy", "best_val_loss", "best_epoch",
            "stopped_epoch")  # the metrics a rerun is held to, where the original logged them
TAG = "trainflow.rerun_of"


@dataclass(frozen=True)
class Replay:
    """What a rerun will do: the original run, the config it replays (with --set applied) and what changed."""

    original: Recorded
    config: PipelineConfig
    digest: str  # the data's now
    changes: list[str]  # code and packages that differ from the original's, in words

    @property
    def data_changed(self) -> bool:
        return self.digest != self.original.digest


def _training(replay: Replay) -> tuple[str, dict[str, float]]:
    out = training_pipeline(replay.config)
    return out.run_id, out.metrics


def _variant(replay: Replay) -> tuple[str, dict[str, float]]:
    config, tags = replay.config, replay.original.tags
    dataset, manifest, stats = prepare_data(config, None)
    trained = variant(config, tags.get("trainflow.variant", "rerun"), int(tags.get("trainflow.repeat", 0)),
                      f"rerun of {replay.original.run_id}", {}, dataset, manifest, stats, None,
                      str(workspace(str(flow_run.id))))
    return trained.run_id, trained.metrics


# kind of run -> how it is replayed -> (the new run, its metrics)
REPLAYS: Registry[Callable[[Replay], tuple[str, dict[str, float]]]] = Registry("kind of run to rerun", {
    "training": _training, "variant": _variant})


def run_of(named: str) -> str:
    """The run id a user named: a run id, or a registered version (models:/NAME@ALIAS, models:/NAME/VERSION) whose
    run logged it."""
    if not named.startswith("models:/"):
        return named
    ref = resolve(named)
    if not ref.run_id:
        raise ConfigError(f"{ref.describe()} names no run that logged it")
    return ref.run_id


def plan(run_id: str, overrides: list[str], allow_data_change: bool = False) -> Replay:
    """The rerun of `run_id`, checked: a run trainflow trained, its config valid today, its data unchanged (or
    `allow_data_change`). ConfigError (exit 2) otherwise, naming both digests when the data changed."""
    original = recorded(run_id)
    try:
        REPLAYS[original.kind]
    except ConfigError as e:
        raise ConfigError(f"run {run_id} is a {original.kind} run; {e}") from None
    if original.tags.get("transfer.source") and original.kind == "variant":
        raise ConfigError(f"run {run_id} is a transfer comparison's variant: rerun its comparison")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(original.config)
        config = plans.run(load_config(path, ["register.enabled=false", *overrides]))
    preflight.check([config])
    digest = preflight.digest(config)
    if digest != original.digest and not allow_data_change:
        raise ConfigError(f"the data changed since run {run_id}: its digest was {original.digest}, it is {digest} "
                          "now; rerun with --allow-data-change to train on the data as it is")
    now = tracking.code_tags() | {"mlflow.source.git.commit": tracking.git_commit() or ""}
    changes = [f"{key}: {original.tags[key]} then, {now.get(key) or 'none'} now" for key in sorted(now)
               if key in original.tags and original.tags[key] != now.get(key)]
    return Replay(original, config, digest, changes)


@flow(name="rerun", flow_run_name=lambda: f"rerun of {flow_run.parameters['run_id']}")
def rerun_flow(run_id: str, config: PipelineConfig, digest: str, changes: list[str]) -> Rerun:
    """Replay run `run_id` with `config` (its recorded one, as planned) -> the new run and how its metrics differ."""
    original = recorded(run_id)
    replay = Replay(original, config, digest, changes)
    new, metrics = REPLAYS[original.kind](replay)
    tracking.RunLogger(new).set_tags({TAG: run_id})
    compared = [(k, original.metrics[k], float(metrics[k])) for k in COMPARED
                if k in original.metrics and metrics.get(k) is not None]
    return Rerun(run_id, new, original.kind, run_url(new), compared, changes,
                 (original.digest, digest) if replay.data_changed else None)
