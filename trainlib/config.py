"""The pipeline config: its sections (trainlib.sections) as one model with the checks that span them, validated
from YAML files and --set overrides (parsed in trainlib.overrides) into one readable ConfigError.
"""

from __future__ import annotations

import copy
import warnings
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from trainlib import averaging
from trainlib.data import defaults
from trainlib.data.kinds import kind
from trainlib.data.sources import SOURCES
from trainlib.errors import ConfigError
from trainlib.models import MODELS, takers
from trainlib.overrides import URI_PREFIXES, parse_set, read_yaml, set_key
from trainlib.sections import (
    AugmentConfig,
    CalibrateConfig,
    DataConfig,
    EarlyStoppingConfig,
    EmaConfig,
    ModelConfig,
    NormalizeConfig,
    OptimizerConfig,
    PredictConfig,
    RegisterConfig,
    RegularizationConfig,
    ScheduleConfig,
    Section,
    SplitConfig,
    SwaConfig,
    TrainingConfig,
    TransferConfig,
)

__all__ = ["AugmentConfig", "CalibrateConfig", "DataConfig", "EarlyStoppingConfig", "EmaConfig", "ModelConfig",
           "NormalizeConfig",
           "OptimizerConfig", "PipelineConfig", "PredictConfig", "RegisterConfig", "RegularizationConfig",
           "ScheduleConfig", "Section", "SplitConfig", "SwaConfig", "TrainingConfig", "TransferConfig", "anchored",
           "flatten", "load_config", "override", "reference", "to_yaml", "validate"]


# `register` is public (the config contract) but shadows ABCMeta.register, which nothing here uses.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"')

    class PipelineConfig(Section):
        name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                 description="experiment and registered-model name (--name); default: the data's "
                                             "and the model's, e.g. digits-cnn, wine-mlp for data.path wine.csv")
        data: DataConfig = DataConfig()
        split: SplitConfig = SplitConfig()
        normalize: NormalizeConfig = NormalizeConfig()
        augment: AugmentConfig = AugmentConfig()
        model: ModelConfig = ModelConfig()
        optimizer: OptimizerConfig = OptimizerConfig()
        regularization: RegularizationConfig = RegularizationConfig()
        schedule: ScheduleConfig = ScheduleConfig()
        training: TrainingConfig = TrainingConfig()
        transfer: TransferConfig = TransferConfig()
        calibrate: CalibrateConfig = CalibrateConfig()
        register: RegisterConfig = RegisterConfig()
        predict: PredictConfig = PredictConfig()

        @model_validator(mode="before")
        @classmethod
        def _by_data(cls, raw: Any) -> Any:
            """The name, model and target column left unset follow the data (trainlib.data.defaults)."""
            return defaults.fill(raw) if isinstance(raw, dict) else raw

        @property
        def data_dims(self) -> int:
            """A sample's dimensions as the model reads the data: a table's columns are signals (C, L) for a model
            that reads them so (cnn1d, gru, lstm) or when data.channels folds them; else the source's own."""
            dims = SOURCES[self.data.source].dims
            if dims == 1 and (MODELS[self.model.name].signal or self.data.channels is not None):
                return 2
            return dims

        @model_validator(mode="after")
        def _consistent(self):
            dims, architecture = self.data_dims, MODELS[self.model.name]
            if dims not in architecture.dims:
                takes = " or ".join(kind(d).describe() for d in architecture.dims)
                raise ConfigError(f"model.name: {self.model.name} takes {takes}; data.source {self.data.source} is "
                                  f"{kind(dims).describe()} (use {', '.join(takers(dims))})")
            kind(dims).check_augment(self.augment.changed(), f"data.source {self.data.source}")
            _averaging(self.training)
            if self.split.val == 0:
                if self.training.early_stopping.enabled:
                    raise ConfigError("training.early_stopping: needs a validation split (split.val > 0) "
                                      "or enabled: false")
                if self.schedule.name == "plateau":
                    raise ConfigError("schedule.name: plateau needs a validation split (split.val > 0)")
                if self.calibrate.method != "none":
                    raise ConfigError(f"calibrate.method: {self.calibrate.method} is fitted on the validation split "
                                      "(split.val > 0)")
            if self.training.devices > 1:
                _data_parallel(self)
            if self.augment.expand and self.data.stream:
                raise ConfigError("augment.expand: needs in-memory data; data.stream keeps images on disk")
            max_lr = self.schedule.max_lr
            found = self.optimizer.lr == "find"  # known once the range test has run
            if self.schedule.name == "cyclical" and max_lr is not None and not found and max_lr <= self.optimizer.lr:
                raise ConfigError(f"schedule.max_lr ({max_lr}) must be above optimizer.lr ({self.optimizer.lr})")
            return self


def _averaging(t: TrainingConfig) -> None:
    """What weight averaging (training.ema, training.swa) cannot do."""
    averaging.check(t.ema.decay, t.swa.start, t.early_stopping.enabled)
    if t.swa.first_epoch(t.epochs) > t.epochs:
        raise ConfigError(f"training.swa.start: epoch {t.swa.start:g} is after the last (training.epochs {t.epochs})")


def _data_parallel(cfg: PipelineConfig) -> None:
    """What data-parallel training (training.devices > 1) cannot do."""
    t = cfg.training
    problems = [(t.mode == "stochastic", "training.mode stochastic trains on one sample per update"),
                (t.batch_size < t.devices, f"training.batch_size {t.batch_size} leaves some of them no sample"),
                (bool(cfg.transfer.source), "transfer learning changes which layers train, which DDP does not allow")]
    for found, problem in problems:
        if found:
            raise ConfigError(f"training.devices: {t.devices} processes share every batch, but {problem}; use "
                              "training.devices: 1")


# ---------------------------------------------------------------- loading, overrides, errors


def _fields_at(cls: Any, path: list[str]) -> list[str]:
    for part in path:
        field = cls.model_fields.get(part) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return []
        cls = field.annotation
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _message(error: dict, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        close = get_close_matches(str(error["loc"][-1]), _fields_at(model, [str(p) for p in error["loc"][:-1]]), n=1)
        hint = f" (did you mean {'.'.join([*map(str, error['loc'][:-1]), close[0]])!r}?)" if close else ""
        return f"{loc}: unknown key{hint}"
    if error["type"] == "value_error":
        text = str(error["ctx"]["error"])
        named = ":" in text and " " not in text.split(":", 1)[0]  # already starts with "field.name:"
        return text if named or not loc else f"{loc}: {text}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc or 'config'}: {error['msg']}{shown}"


def validate(raw: dict, model: type[BaseModel] = PipelineConfig, what: str = "config"):
    """Validate a raw dict as `model`; errors become one ConfigError with a readable line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the {what} must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_message(e, model) for e in exc.errors()))
        raise ConfigError(f"invalid {what}: " + lines[0] if len(lines) == 1 else
                          f"invalid {what}:\n" + "\n".join(f"  - {line}" for line in lines)) from None


# Keys that name files: relative in a config file, they mean relative to that file's folder (so a config works
# from any directory, as its neighbours' paths do); given with --set, relative to the current directory. Either
# way the loaded config holds them absolute, so the config.yaml a run records names the same files from anywhere.
PATH_KEYS = ("data.path", "data.labels", "transfer.source")
NOT_FILES = (*URI_PREFIXES, "torchvision:")


def _anchor_paths(raw: dict, folder: Path) -> None:
    """Make the relative file paths of a config file's `raw` sections absolute, against `folder`."""
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        node = raw.get(section)
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str):
            node[leaf] = anchored(value, folder, key)


def anchored(value: str, folder: Path, key: str = "transfer.source") -> str:
    """A file path the user gave for `key`, absolute against `folder` when relative (the rule of PATH_KEYS: a
    command line's against the current directory, a config file's against its folder); URIs and torchvision names
    as they are."""
    if "\x00" in value:
        raise ConfigError(f"{key}: {value!r} is not a path (it holds a NUL character)")
    if value and not value.startswith(NOT_FILES) and not Path(value).is_absolute():
        return str((folder / value).resolve())
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """The config from an optional YAML file plus `key=value` overrides, validated once. Relative file paths in
    the file (PATH_KEYS) are read against the file's folder, those given in `overrides` against the current one."""
    raw = read_yaml(path) if path else {}
    if path:
        _anchor_paths(raw, Path(path).resolve().parent)
    for item in overrides:
        set_key(raw, *parse_set(item))
    _anchor_paths(raw, Path.cwd())
    return validate(raw)


def override(config: PipelineConfig, updates: dict[str, Any]) -> PipelineConfig:
    """A copy of `config` with dotted keys replaced, validated again."""
    raw = copy.deepcopy(config.model_dump(mode="json"))
    for key, value in updates.items():
        set_key(raw, key, value)
    return validate(raw)


def flatten(config: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf (MLflow params)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def reference(cls: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) for every field: the config reference."""
    rows = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += reference(ann, f"{prefix}{name}.")
        else:
            rows.append((prefix + name, field.default, field.description or ""))
    return rows
