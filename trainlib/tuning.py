"""Hyperparameter search (Optuna): search files, spaces, samplers, pruners, the pruning callback, and the
config trials start from. Where studies are stored and how processes share one is tasks/tuning/storage.py's;
which keys trials may change is trainlib.variants'."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
import optuna
from pydantic import Field, field_serializer, model_validator

from trainlib.config import PipelineConfig, Section, override, validate
from trainlib.errors import ConfigError
from trainlib.monitor import HIGHER, LOWER, MONITORS
from trainlib.overrides import read_yaml
from trainlib.redact import redact
from trainlib.registry import Registry
from trainlib.variants import check_keys, needs_validation, share_cpus

OPTUNA = {HIGHER: "maximize", LOWER: "minimize"}  # a search file's direction is in Optuna's words

PRUNE_STARTUP_TRIALS = 2  # trials that finish before the median pruner starts comparing


class FloatParam(Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="sample on a log scale (low > 0)")
    step: float | None = Field(None, description="grid spacing (needed by grid search)")


class IntParam(Section):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1


class CategoricalParam(Section):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _grid(s) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler(grid_values(s.space), seed=s.seed)


SAMPLERS = Registry("search strategy", {
    "grid": _grid,
    "random": lambda s: optuna.samplers.RandomSampler(seed=s.seed),
    "bayesian": lambda s: optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.startup()),
    "gp": lambda s: optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup()),
})
COSTS = ("train_seconds", "train_cpu_seconds", "train_wall_seconds", "train_peak_memory_mb", "model_parameters")
MODELLED = ("bayesian", "gp")  # the strategies that sample at random for their first trials, then from a model
STARTUP_TRIALS = 10  # Optuna's default for both

# name -> (search, epochs) -> pruner. Steps are epochs (1, 2, ...): the first `prune_after` always run,
# so pruning may start at step prune_after + 1.
PRUNERS = Registry("pruner", {
    "none": lambda s, epochs: optuna.pruners.NopPruner(),
    "median": lambda s, epochs: optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                                            n_warmup_steps=s.prune_after + 1),
    "hyperband": lambda s, epochs: optuna.pruners.HyperbandPruner(min_resource=s.prune_after + 1,
                                                                  max_resource=max(epochs, s.prune_after + 1)),
})


class SearchConfig(Section):
    """A `trainflow tune --search` file."""

    strategy: Annotated[str, Field(description="grid | random | bayesian (TPE) | gp")] = "bayesian"
    metric: str = Field("val_accuracy", description="validation metric to optimize (never a test metric)")
    direction: Literal["maximize", "minimize"] | None = Field(None, description="default: the metric's own")
    n_trials: Annotated[int, Field(ge=1)] | None = Field(
        20, description="trials to run (default 20; grid: every point; with only a timeout: no limit)")
    timeout: Annotated[float, Field(gt=0)] | None = Field(None, description="seconds after which no trial starts")
    pruner: str = Field("median", description="none | median | hyperband")
    prune_after: Annotated[int, Field(ge=0)] = Field(2, description="epochs every trial runs before pruning")
    max_parallel: Annotated[int, Field(ge=1)] = Field(2, description="trials running at once")
    min_complete: Annotated[int, Field(ge=1)] = Field(1, description="fail when fewer trials than this complete "
                                                                     "(failed and pruned trials do not count)")
    storage: str | None = Field(None, description="sqlite:///f.db, postgresql://..., journal:///f.log: shares "
                                                  "and resumes the study (default: in memory)")
    study_name: str | None = Field(None, description="default: <config name>-study")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="sampler seed")
    startup_trials: Annotated[int, Field(ge=1)] | None = Field(
        None, description="bayesian, gp: trials sampled at random before the model guides the search (default: "
                          "half the trials, at most 10)")
    retrain: Literal["train", "train+val"] = Field("train", description="data the best config is retrained on")
    second_metric: str | None = Field(None, description="a cost minimized beside `metric`: " + " | ".join(COSTS) +
                                      "; the search finds their Pareto front (Optuna's multi-objective sampling, no "
                                      "pruning) and registers the member `tolerance` picks")
    tolerance: Annotated[float, Field(ge=0)] = Field(0.01, description="two objectives: the front's member retrained "
                                                     "is the lowest on second_metric of those within this of the "
                                                     "front's best `metric`")
    space: dict[str, Param] = Field(min_length=1, description="dotted config key -> distribution")

    @field_serializer("storage", when_used="json")
    def _no_password(self, url: str | None) -> str | None:  # Prefect stores flow parameters as this JSON
        return redact(url) if url else url

    @model_validator(mode="after")
    def _check(self):
        SAMPLERS.check(self.strategy)
        PRUNERS.check(self.pruner)
        if self.metric not in MONITORS:
            raise ConfigError(f"search.metric: {self.metric!r} is not a validation metric; valid: "
                              f"{', '.join(sorted(MONITORS))}")
        natural = OPTUNA[MONITORS[self.metric]]
        if self.direction not in (None, natural):
            raise ConfigError(f"search.direction: {self.metric} should be {natural}d, not {self.direction}d")
        for key, p in self.space.items():
            if p.type != "categorical" and p.low >= p.high:
                raise ConfigError(f"search.space.{key}: low ({p.low}) must be below high ({p.high})")
            if p.type != "categorical" and p.log and p.low <= 0:
                raise ConfigError(f"search.space.{key}: a log scale needs low > 0")
        if self.strategy == "grid":
            grid_values(self.space)  # floats need a step
        elif self.n_trials is None and self.timeout is None:
            raise ConfigError("search: give n_trials or timeout (or both)")
        if (budget := self.budget()) is not None and self.min_complete > budget:
            raise ConfigError(f"search.min_complete: {self.min_complete} is more than the {budget} trials planned")
        if self.second_metric is not None and self.second_metric not in COSTS:
            raise ConfigError(f"search.second_metric: {self.second_metric!r} is not a cost a trial measures; valid: "
                              f"{', '.join(COSTS)}")
        if self.second_metric is not None and "pruner" in self.model_fields_set and self.pruner != "none":
            raise ConfigError("search.pruner: Optuna prunes single-objective searches only; with second_metric give "
                              "pruner: none (or leave it out)")
        if self.startup_trials is not None and self.strategy not in MODELLED:
            raise ConfigError(f"search.startup_trials: only {' and '.join(MODELLED)} search start with random "
                              f"trials, not {self.strategy}")
        if self.startup_trials is not None and budget is not None and self.startup_trials >= budget:
            raise ConfigError(f"search.startup_trials: {self.startup_trials} random trials of {budget} leave none to "
                              f"the model, which would make this a random search; give fewer")
        return self

    def startup(self) -> int:
        """Random trials before a modelled search (bayesian, gp) follows its model: as given, else half the budget,
        at most Optuna's 10 (at its default, 10 of 8 trials, a Bayesian search would be a random one)."""
        if self.startup_trials is not None:
            return self.startup_trials
        budget = self.budget()
        return STARTUP_TRIALS if budget is None else max(1, min(STARTUP_TRIALS, budget // 2))

    @property
    def goal(self) -> str:
        return self.direction or OPTUNA[MONITORS[self.metric]]

    @property
    def directions(self) -> list[str]:
        """Optuna's direction of each objective: `metric`'s, then second_metric's (a cost: minimized)."""
        return [self.goal, *(["minimize"] if self.second_metric else [])]

    @property
    def pruning(self) -> str:
        """The pruner used: `pruner`, or none with two objectives (Optuna prunes single-objective studies only)."""
        return "none" if self.second_metric else self.pruner

    def budget(self) -> int | None:
        """Trials the study should hold in the end: n_trials as given; when not given, every point of a grid,
        no limit when a timeout is set, else 20. None: until the timeout."""
        chosen = self.n_trials if "n_trials" in self.model_fields_set else None
        if self.strategy == "grid":
            size = int(np.prod([len(v) for v in grid_values(self.space).values()]))
            return min(size, chosen) if chosen else size
        if "n_trials" in self.model_fields_set or self.timeout is None:
            return self.n_trials
        return None


def load_search(path) -> SearchConfig:
    """A search file, validated (readable errors, unknown keys refused)."""
    return validate(read_yaml(path, "search file"), SearchConfig, "search file")


def grid_values(space: dict[str, Param]) -> dict[str, list]:
    """Every value a grid search visits, per parameter."""
    values = {}
    for key, p in space.items():
        if p.type == "categorical":
            values[key] = list(p.choices)
        elif p.type == "int":
            values[key] = list(range(p.low, p.high + 1, p.step))
        elif p.step is None:
            raise ConfigError(f"search.space.{key}: grid search needs a step for a float (or use categorical)")
        else:
            values[key] = [round(float(v), 12) for v in np.arange(p.low, p.high + p.step / 2, p.step)]
    return values


def check_space(config: PipelineConfig, search: SearchConfig) -> None:
    """The search space against the config: known keys, valid bounds and choices."""
    needs_validation(config, "tuning")
    check_keys(config, {k: p.choices if p.type == "categorical" else [p.low, p.high]
                        for k, p in search.space.items()}, "search.space")
    if search.retrain == "train+val" and "plateau" in _values(search, "schedule.name", config.schedule.name):
        raise ConfigError("search.retrain: train+val leaves no validation split, which the plateau schedule needs")
    if search.retrain == "train+val" and set(_values(search, "calibrate.method", config.calibrate.method)) - {"none"}:
        raise ConfigError("search.retrain: train+val leaves no validation split, which calibrate.method fits on")


def _values(search: SearchConfig, key: str, default) -> list:
    p = search.space.get(key)
    return p.choices if p is not None and p.type == "categorical" else [default]


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, Param]) -> dict[str, Any]:
    """Draw one value per parameter."""
    out = {}
    for key, p in space.items():
        if p.type == "float":
            out[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=None if p.log else p.step)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=1 if p.log else p.step)
        elif all(isinstance(c, str | int | float | bool | type(None)) for c in p.choices):
            out[key] = trial.suggest_categorical(key, p.choices)
        else:  # lists (e.g. model.hidden): Optuna's storages keep plain values, so store their JSON text
            out[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in p.choices]))
    return out


def decode(params: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    """Config values from a stored trial's params (undoing `suggest`'s JSON text for list choices)."""
    return {k: json.loads(v) if isinstance(v, str) and k in space and space[k].type == "categorical"
            and v not in space[k].choices else v for k, v in params.items()}


def front_choice(front: list[optuna.trial.FrozenTrial], search: SearchConfig) -> optuna.trial.FrozenTrial:
    """The member of a two-objective study's Pareto `front` to retrain: of those whose `metric` is within
    `search.tolerance` of the front's best, the lowest on second_metric (ties: the better metric, then the first)."""
    sign = 1 if search.goal == "maximize" else -1
    best = max(sign * t.values[0] for t in front)
    near = [t for t in front if sign * t.values[0] >= best - search.tolerance]
    return min(near, key=lambda t: (t.values[1], -sign * t.values[0], t.number))


def retrain_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """The epochs a `retrain: train+val` trains the chosen trial's config for: its best epoch on validation (the
    train+val split has no validation left to stop on). A trial told without one (a study written by another tool)
    is refused: training for the config's epochs instead would be a different model than the one chosen."""
    best = trial.user_attrs.get("best_epoch")
    if not best:
        raise ConfigError(f"search.retrain: train+val trains for the chosen trial's best epoch, and trial "
                          f"{trial.number} recorded none (its study was written elsewhere?); use retrain: train")
    return int(best)


def chosen(study: optuna.Study, search: SearchConfig) -> optuna.trial.FrozenTrial:
    """The trial a search retrains: the best one, or with two objectives the front's member `front_choice` picks."""
    return front_choice(study.best_trials, search) if search.second_metric else study.best_trial


class PruningCallback:
    """Engine callback: reports the metric every epoch and stops hopeless trials (raises TrialPruned)."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.epoch = trial, metric, 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epoch = epoch
        self.trial.report(metrics[self.metric], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


def trial_base(config: PipelineConfig, search: SearchConfig, parallel: int) -> PipelineConfig:
    """The config trials start from: early stopping watches the search metric, so a trial's score, its
    best epoch and the weights it ends with all agree; `parallel` trials share the CPUs."""
    return share_cpus(override(config, {"training.early_stopping.monitor": search.metric}), parallel)
