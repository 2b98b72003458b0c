"""What a batch scoring will do, checked before it starts: the registered version (resolved once), what it takes
(its MLflow model's metadata `trainflow`, trainlib.scoring.InputSpec) and the data it was trained on (its run's
config), and the reader of the data to score, checked against it. MLflow only (no Prefect): `trainflow predict`
builds this before it starts a Prefect API, and the batch-predict flow builds the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import yaml

from tasks import settings, tracking
from tasks.registry.model_ref import ModelRef, as_named, resolve
from trainlib.config import PipelineConfig
from trainlib.data import inputs, sources
from trainlib.device import resolve_device
from trainlib.errors import ConfigError
from trainlib.scoring import InputSpec, output_format


@dataclass(frozen=True)
class Scoring:
    """What a version scores and how: the model's InputSpec and the data it was trained on (its run's config)."""

    model: ModelRef
    spec: InputSpec
    flavor: str  # pytorch (one network) | python_function (an ensemble)
    training_data: dict = field(hash=False)  # the `data` section of the version's training config
    experiment: str  # where the version's run is, and so its prediction runs


def scoring(ref: ModelRef) -> Scoring:
    """Read what `ref` takes from its MLflow model (metadata `trainflow`) and its run's config; one readable error
    for a version trainflow did not register."""
    info = mlflow.models.get_model_info(ref.pinned)
    described = (info.metadata or {}).get("trainflow")
    if described is None:
        raise ConfigError(f"{ref.describe()} does not say what it takes (it was registered before trainflow kept "
                          "its inputs' description, or by another tool): retrain it to score with it")
    run = tracking.client().get_run(ref.run_id)
    try:
        config = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{ref.run_id}/config.yaml")) or {}
    except Exception:  # a run without its config (MLflow raises several types): the defaults say the units
        config = {}
    spec = InputSpec.from_dict(described)
    _agrees(ref, spec, info.signature)
    flavor = "pytorch" if "pytorch" in info.flavors else "python_function"
    experiment = tracking.client().get_experiment(run.info.experiment_id).name
    return Scoring(ref, spec, flavor, config.get("data") or {}, experiment)


def _agrees(ref: ModelRef, spec: InputSpec, signature) -> None:
    """The readers prepare float32 batches of spec.shape: the model's signature must take exactly that."""
    if signature is None or not signature.inputs.is_tensor_spec():
        return
    tensor = signature.inputs.inputs[0]
    if tuple(tensor.shape[1:]) != tuple(spec.shape) or tensor.type != np.dtype(np.float32):
        raise ConfigError(f"{ref.describe()}: its signature takes {tensor.type} of shape {tensor.shape}, but its "
                          f"description says float32 of shape (-1, {', '.join(map(str, spec.shape))}): it was not "
                          "logged by trainflow as it is")


def reader(what: Scoring, data: str | None, config: PipelineConfig | None):
    """The reader of the data to score, checked against the model: a path (a folder of images, a CSV or Parquet
    table, an .npz or .npy of signals), or a config's data section (any training source)."""
    if data is not None:
        kind = inputs.kind_of(data)
        path, target = data, what.training_data.get("target", "label")
    else:
        kind, path, target = sources.SOURCES[config.data.source].files, config.data.path, config.data.target
    if kind is None:  # a source without files of its own (the embedded digits, a torchvision set): loaded whole
        opened = inputs.DatasetReader(sources.load(**config.data.model_dump()), what.spec,
                                      f"data.source {config.data.source}")
    else:
        opened = inputs.READERS[kind](path, what.spec, target)
    opened.check()
    return opened


def digest(data: str | None, config: PipelineConfig | None) -> str:
    """The scored data's content digest (every file's names, sizes and bytes)."""
    if data is not None:  # a path: its files (any source but the embedded digits is fingerprinted by its files)
        return sources.fingerprint("files", data)
    return sources.fingerprint(config.data.source, config.data.path)


@dataclass(frozen=True)
class ScoringPlan:
    """A checked batch scoring: the version, the data (a path, or a config's data section) and the output file."""

    what: Scoring
    data: str | None
    config: PipelineConfig  # its predict section (batch size, drift threshold, device), data if no path
    out: str
    rows: int  # rows (files) to score, unreadable ones included


def default_out(ref: ModelRef) -> Path:
    """Where predictions go when --out is not given: the project's predictions folder, one file per scoring
    (`NAME-vVERSION-TIME.parquet`; a run's model: `NAME-run-RUNID-TIME.parquet`)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")  # to the microsecond: two scorings, two files
    return settings.HOME / "predictions" / f"{ref.short}-{stamp}.parquet"


def plan(model: str, data: str | None, config: PipelineConfig, from_config: bool, out: str | None,
         named: str | None = None) -> ScoringPlan:
    """Check everything a scoring needs before it starts: the model URI, the data (a path, or the config's data
    section when `from_config`), the output file's format. `named`: the URI the user gave when `model` is the
    version it was resolved to already (the CLI resolves once, the flow scores that version)."""
    if (data is None) == (not from_config):
        raise ConfigError("predict: give the data to score, --data PATH (a folder of images, a CSV or Parquet "
                          "file, an .npz or .npy of signals) or --config FILE (its data section), not both")
    if out is not None:
        output_format(out)
    resolve_device(config.predict.device, "predict.device")  # one that is not here: before anything is read
    ref = resolve(model)
    what = scoring(as_named(ref, named) if named else ref)
    source = reader(what, data, None if data else config)
    return ScoringPlan(what, data, config, str(Path(out).resolve()) if out else str(default_out(what.model)),
                       len(source))


def start(what: Scoring, data: str | None, config: PipelineConfig | None, data_digest: str, params: dict,
          tags: dict) -> str:
    """The prediction run, in the version's experiment. -> its id."""
    ref = what.model
    source = str(Path(data).resolve()) if data else f"config data.source {config.data.source}"
    named = f"{ref.name} v{ref.version}" if ref.version is not None else f"{ref.name} run {ref.run_id}"
    return tracking.start_run(
        what.experiment, f"predict {named}", {"model": ref.uri, "data": source, **params},
        {"trainflow.kind": "prediction", "model.name": ref.name, "model.version": ref.version or "",
         "model.alias": ref.alias or "", "model.aliases": ",".join(ref.aliases), "model.run_id": ref.run_id,
         "dataset.digest": data_digest, **tags})
