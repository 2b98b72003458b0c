"""What each command will do, built and checked in one place before anything starts.

One function per command. The CLI calls it before it starts a Prefect API or any task, so bad input fails
at once (exit 2, one message); the flow calls the same function first, for deployments and code that
start the flow without the CLI. Nothing here touches Prefect or MLflow: a plan is the configs to train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import runners
from trainlib.config import NOT_FILES, PipelineConfig, override
from trainlib.data.sources import SOURCES
from trainlib.ensemble import METHODS, EnsembleConfig, Member, plan
from trainlib.errors import ConfigError
from trainlib.tuning import SearchConfig, check_space, trial_base
from trainlib.variants import check_keys, label, needs_validation, share_cpus, variants


def fresh_weights(config: PipelineConfig, command: str) -> None:
    """Only the transfer flow starts from a source model: elsewhere a set transfer.source would be ignored."""
    if config.transfer.source:
        raise ConfigError(f"transfer.source is set, but `trainflow {command}` trains from fresh weights; use "
                          "`trainflow transfer` to start from a source model")


def title(config: PipelineConfig) -> str:
    """What is trained, in words: the CLI's header and the flow run's name, e.g.
    `digits-cnn: cnn, adam at lr 0.001, schedule none, on digits`."""
    c = config
    return (f"{c.name}: {c.model.name}, {c.optimizer.name} at lr {c.optimizer.lr:.3g}, schedule {c.schedule.name}, "
            f"on {c.data.source}")


WHERE = "relative paths in a config file are read against its folder, with --set against the current one"


def inputs_exist(config: PipelineConfig) -> None:
    """The files a config names exist, checked before a flow starts: a typo fails here, not as a FAILED run
    after the servers started. (Registered models are looked up when the flow starts: that needs MLflow.)"""
    data = config.data
    if SOURCES[data.source].needs_path and not data.download and not Path(data.path).exists():
        raise ConfigError(f"data.path: no such file or folder: {data.path} ({WHERE})")
    source = config.transfer.source
    if source and not source.startswith(NOT_FILES) and not Path(source).is_file():
        raise ConfigError(f"transfer.source: no such file: {source} (give models:/name@alias, a trainflow model "
                          f"file, or torchvision:resnet18; {WHERE})")


def run(config: PipelineConfig) -> PipelineConfig:
    """`trainflow run`: one config, trained from fresh weights."""
    fresh_weights(config, "run")
    inputs_exist(config)
    return config


def transfer(config: PipelineConfig) -> PipelineConfig:
    """`trainflow transfer`: one config, trained from `transfer.source`."""
    if not config.transfer.source:
        raise ConfigError("transfer.source: give the model to start from (models:/name@alias, a model file, or "
                          "torchvision:resnet18)")
    inputs_exist(config)
    return config


@dataclass(frozen=True)
class Variant:
    label: str  # e.g. `optimizer.name=sgd, schedule.name=step`
    overrides: dict[str, Any]
    config: PipelineConfig


@dataclass(frozen=True)
class Comparison:
    config: PipelineConfig
    variants: list[Variant]
    parallel: int  # variants trained at once
    runner: str | None


def compare(config: PipelineConfig, vary: dict[str, list], max_parallel: int = 2,
            runner: str | None = None) -> Comparison:
    """`trainflow compare`: every combination of the `vary` values, each a full config, validated now."""
    fresh_weights(config, "compare")
    needs_validation(config, "compare")
    check_keys(config, vary, "--vary")
    combos = variants(vary)
    parallel = min(max_parallel, len(combos))
    base = share_cpus(config, parallel)
    planned = [Variant(label(o), o, override(base, o)) for o in combos]
    for v in planned:
        inputs_exist(v.config)
    return Comparison(config, planned, parallel, runners.check(runner))


@dataclass(frozen=True)
class Study:
    config: PipelineConfig
    search: SearchConfig
    trial_base: PipelineConfig  # what every trial's parameters change
    parallel: int  # trials running at once
    name: str  # the Optuna study's
    runner: str | None


def tune(config: PipelineConfig, search: SearchConfig, runner: str | None = None) -> Study:
    """`trainflow tune`: the search space checked against the config, and the config trials start from."""
    fresh_weights(config, "tune")
    inputs_exist(config)
    check_space(config, search)
    parallel = min(search.max_parallel, search.budget() or search.max_parallel)
    return Study(config, search, trial_base(config, search, parallel), parallel,
                 search.study_name or f"{config.name}-study", runners.check(runner))


@dataclass(frozen=True)
class Ensemble:
    config: PipelineConfig
    ensemble: EnsembleConfig
    members: list[Member]  # every member's config, validated
    parallel: int  # members trained at once (boosting: 1, in sequence)
    runner: str | None


def ensemble(config: PipelineConfig, settings: EnsembleConfig, runner: str | None = None) -> Ensemble:
    """`trainflow ensemble`: every member's config (or registered model), sharing the CPUs of one process."""
    fresh_weights(config, "ensemble")
    members = plan(config, settings)
    for m in members:
        inputs_exist(m.config or config)
    parallel = 1 if METHODS[settings.method].sequential else min(settings.max_parallel, len(members))
    members = [dataclasses.replace(m, config=share_cpus(m.config, parallel)) if m.config else m for m in members]
    return Ensemble(config, settings, members, parallel, runners.check(runner))
