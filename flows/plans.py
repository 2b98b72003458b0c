"""What each command will do, built and checked in one place before anything starts.

One function per command. The CLI calls it before it starts a Prefect API or any task, so bad input fails
at once (exit 2, one message); the flow calls the same function first, for deployments and code that
start the flow without the CLI. Nothing here touches Prefect or MLflow: a plan is the configs to train.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import runners
from trainlib import lr_finder, recipe, sequential
from trainlib.claims import Entry, load_entry
from trainlib.config import NOT_FILES, PipelineConfig, load_config, override, validate
from trainlib.data.sources import SOURCES
from trainlib.ensemble import METHODS, EnsembleConfig, Member, plan
from trainlib.errors import ConfigError
from trainlib.inference import ALPHA
from trainlib.overrides import parse_set
from trainlib.tuning import SearchConfig, check_space, trial_base
from trainlib.variants import check_keys, label, needs_validation, share_cpus, variants


def fresh_weights(config: PipelineConfig, command: str) -> None:
    """Only the transfer flow starts from a source model: elsewhere a set transfer.source would be ignored."""
    if config.transfer.source:
        raise ConfigError(f"transfer.source is set, but `trainflow {command}` trains from fresh weights; use "
                          "`trainflow transfer` to start from a source model")


def _lr(lr: float | str) -> str:
    return f"{lr:.3g}" if isinstance(lr, float) else f"{lr} (the range test's suggestion)"


def title(config: PipelineConfig) -> str:
    """What is trained, in words: the CLI's header and the flow run's name, e.g.
    `digits-cnn: cnn, adam at lr 0.001, schedule none, on digits`."""
    c, d = config, config.data
    data = d.source + (f" {Path(d.path).name}" if d.path and SOURCES[d.source].needs_path else "")
    if SOURCES[d.source].files == "table":  # the class column, which may have been found rather than given
        data += f" (target column {d.target!r})"
    return (f"{c.name}: {c.model.name}, {c.optimizer.name} at lr {_lr(c.optimizer.lr)}, schedule {c.schedule.name}, "
            f"on {data}")


WHERE = "relative paths in a config file are read against its folder, with --set against the current one"


def inputs_exist(config: PipelineConfig) -> None:
    """The files a config names exist, and its data fits the memory budget, checked before a flow starts: a typo
    or a folder too big for memory fails here, not as a FAILED run after the servers started. (Registered models
    are looked up when the flow starts: that needs MLflow.)"""
    data = config.data
    if SOURCES[data.source].needs_path and not data.download and not Path(data.path).exists():
        raise ConfigError(f"data.path: no such file or folder: {data.path} ({WHERE})")
    if data.labels and not Path(data.labels).is_file():
        raise ConfigError(f"data.labels: no such file: {data.labels} ({WHERE})")
    recipe.check_memory(data)
    source = config.transfer.source
    if source and not source.startswith(NOT_FILES) and not Path(source).is_file():
        raise ConfigError(f"transfer.source: no such file: {source} (give models:/name@alias, a trainflow model "
                          f"file, or torchvision:resnet18; {WHERE})")


def run(config: PipelineConfig) -> PipelineConfig:
    """`trainflow run`: one config, trained from fresh weights."""
    fresh_weights(config, "run")
    inputs_exist(config)
    return config


def lr_find(config: PipelineConfig, updates: int, start: float, end: float) -> PipelineConfig:
    """`trainflow lr-find`: a sweep of at least 20 updates over 0 < start < end, on data that exists."""
    inputs_exist(config)
    if updates < 20:
        raise ConfigError(f"--updates {updates}: the suggestion needs at least 20 updates (default "
                          f"{lr_finder.UPDATES})")
    if not 0 < start < end:
        raise ConfigError(f"--start {start:g}, --end {end:g}: the sweep needs 0 < start < end")
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
class Repeat:
    """One training of a comparison: repeat `repeat` of a variant, with its seeds moved by `repeat`."""

    label: str  # the variant's
    repeat: int  # 0, 1, ...: training.seed + repeat (and split.seed + repeat with resplit)
    of: int  # repeats in all
    overrides: dict[str, Any]  # the variant's
    config: PipelineConfig

    @property
    def name(self) -> str:
        """The child run's name: the variant's label, with `#repeat` when there are repeats."""
        return f"{self.label} #{self.repeat}" if self.of > 1 else self.label


@dataclass(frozen=True)
class Comparison:
    config: PipelineConfig
    variants: list[Variant]
    repeats: int  # trainings of every variant, paired: repeat i of every variant has the same seeds
    resplit: bool  # repeat i is also scored on another split (split.seed + i)
    baseline: str  # the label every other variant is compared with
    parallel: int  # trainings at once
    runner: str | None
    margins: dict[str, float] = dataclasses.field(default_factory=dict)  # equivalence margins given (--margin)
    sequential: bool = False  # `--repeats auto:MAX`: `repeats` is MAX, trained in rounds (trainlib/sequential.py)

    @property
    def looks(self) -> list[sequential.Look]:
        """When the verdicts are looked at: after each round of a sequential design, else once after all repeats."""
        return sequential.looks(self.repeats) if self.sequential else [sequential.Look(self.repeats, ALPHA)]

    @functools.cached_property  # each is a validated config: built once per plan
    def runs(self) -> list[Repeat]:
        """Every training (a sequential design's up to MAX), repeat by repeat (repeat 0 of every variant first:
        early results compare)."""
        return [Repeat(v.label, i, self.repeats, v.overrides, seeded(v.config, i, self.resplit))
                for i in range(self.repeats) for v in self.variants]

    @property
    def split_seeds(self) -> list[int]:
        """The split seed of every repeat's data, in order, each once."""
        return list(dict.fromkeys(seeded(self.config, i, self.resplit).split.seed for i in range(self.repeats)))


def seeded(config: PipelineConfig, repeat: int, resplit: bool) -> PipelineConfig:
    """Repeat `repeat`'s config: training.seed + repeat, and split.seed + repeat with `resplit`."""
    if repeat == 0:
        return config
    changes = {"training.seed": config.training.seed + repeat}
    return override(config, changes | ({"split.seed": config.split.seed + repeat} if resplit else {}))


def baseline_label(planned: list[Variant], baseline: str | None) -> str:
    """The variant every other is compared with: `baseline` (a label, or its values: `sgd` for
    `optimizer.name=sgd`), by default the first."""
    if baseline is None:
        return planned[0].label
    wanted = baseline.replace(" ", "")
    for v in planned:
        if wanted in (v.label.replace(" ", ""), ",".join(str(x) for x in v.overrides.values()).replace(" ", "")):
            return v.label
    raise ConfigError(f"--baseline {baseline!r}: not a variant; the variants are "
                      f"{', '.join(v.label for v in planned)}")


def compare(config: PipelineConfig, vary: dict[str, list], max_parallel: int = 2, runner: str | None = None,
            repeats: int | str = 1, resplit: bool = False, baseline: str | None = None,
            combos: list[dict[str, Any]] | None = None, margins: dict[str, float] | None = None) -> Comparison:
    """`trainflow compare`: every combination of the `vary` values (or the `combos` given: each a dict of
    overrides), each a full config, validated now, trained `repeats` times with paired seeds (`auto[:MAX]`: in
    rounds until the verdicts are decided, trainlib/sequential.py). With transfer.source set, every variant starts
    from that model as its transfer.strategy says."""
    needs_validation(config, "compare")
    inputs_exist(config)
    if combos is not None:
        vary = {k: [c[k] for c in combos if k in c] for k in dict.fromkeys(k for c in combos for k in c)}
    check_keys(config, vary, "--vary")
    if "transfer.source" in vary:
        raise ConfigError("--vary transfer.source: every variant starts from the same source; vary "
                          "transfer.strategy (scratch, feature_extraction, finetune) against it")
    repeats, auto = sequential.parse(str(repeats))
    if resplit and repeats < 2:
        raise ConfigError("--resplit: scores each repeat on another split; it needs --repeats 2 or more")
    combos = variants(vary) if combos is None else combos
    if not combos:
        raise ConfigError("compare: no variants to train")
    if auto and len(combos) < 2:
        raise ConfigError(f"--repeats auto: adds repeats until every variant's verdict against the baseline is "
                          f"decided; {label(combos[0])} is the only variant")
    parallel = min(max_parallel, len(combos) * repeats)
    base = share_cpus(config, parallel)
    planned = [Variant(label(o), o, override(base, o)) for o in combos]
    for v in planned:
        inputs_exist(v.config)
    chosen = baseline_label(planned, baseline)
    check_margins(margins or {})
    return Comparison(config, planned, repeats, resplit, chosen, parallel, runners.check(runner),
                      dict(margins or {}), auto)


@dataclass(frozen=True)
class Variance:
    config: PipelineConfig
    sources: list[str]  # trainlib/variance.py SOURCES, and `all`
    repeats: int  # per source, repeat 0 shared
    runs: list[Repeat]  # label: the source (`base` for the shared repeat 0)
    parallel: int
    runner: str | None


def variance(config: PipelineConfig, sources: list[str], repeats: int, max_parallel: int = 2,
             runner: str | None = None) -> Variance:
    """`trainflow variance`: one config trained `repeats` times per source of randomness, only that source's seed
    moving (trainlib/variance.py), every config validated now."""
    from trainlib import variance as design

    fresh_weights(config, "variance")
    inputs_exist(config)
    planned = design.design(config, sources, repeats)
    parallel = min(max_parallel, len(planned))
    base = share_cpus(config, parallel)
    runs = [Repeat(group, i, repeats, o, c) for (group, i, o), c in zip(planned, design.configs(base, planned),
                                                                          strict=True)]
    return Variance(base, sources, repeats, runs, parallel, runners.check(runner))


def check_margins(margins: dict[str, float]) -> None:
    """--margin MEASURE=VALUE: an equivalence margin for a measure a comparison reports, above 0 (the defaults
    by kind of metric: trainlib/evidence.py MARGINS)."""
    from trainlib.measures import RUN_MEASURES

    for key, value in margins.items():
        if key not in RUN_MEASURES:
            raise ConfigError(f"--margin {key}: not a measure of a comparison; valid: {', '.join(RUN_MEASURES)}")
        if not (isinstance(value, int | float) and 0 < value < float("inf")):
            raise ConfigError(f"--margin {key}={value}: give a number above 0 (an absolute difference in {key})")


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
    repeats: int = 1  # the whole ensemble trained this many times, each against its own members
    resplit: bool = False  # repeat i also on split.seed + i

    def repeat(self, i: int) -> tuple[PipelineConfig, EnsembleConfig]:
        """Repeat i's config and settings: members' seeds after the previous repeats' (training.seed + i x size),
        ensemble.seed + i, and split.seed + i with resplit. Only repeat 0 (the ensemble a run without repeats
        trains) is registered."""
        if i == 0:
            return self.config, self.ensemble
        changes = {"training.seed": self.config.training.seed + i * self.ensemble.size, "register.enabled": False}
        if self.resplit:
            changes["split.seed"] = self.config.split.seed + i
        return override(self.config, changes), self.ensemble.model_copy(update={"seed": self.ensemble.seed + i})


def ensemble(config: PipelineConfig, settings: EnsembleConfig, runner: str | None = None, repeats: int = 1,
             resplit: bool = False) -> Ensemble:
    """`trainflow ensemble`: every member's config (or registered model), sharing the CPUs of one process."""
    fresh_weights(config, "ensemble")
    if resplit and repeats < 2:
        raise ConfigError("--resplit: scores each repeat on another split; it needs --repeats 2 or more")
    if repeats > 1 and any(isinstance(m, str) and m.startswith("models:/") for m in settings.configs or []):
        raise ConfigError("--repeats: voting over registered models has nothing to train again; repeat members "
                          "given as configs")
    members = plan(config, settings)
    for m in members:
        inputs_exist(m.config or config)
    parallel = 1 if METHODS[settings.method].sequential else min(settings.max_parallel, len(members))
    members = [dataclasses.replace(m, config=share_cpus(m.config, parallel)) if m.config else m for m in members]
    return Ensemble(config, settings, members, parallel, runners.check(runner), repeats, resplit)


STUDY_ENTRIES = Path(__file__).resolve().parents[1] / "configs" / "study"  # the study's entries, as shipped
STUDY_NAME = "technique-study"  # the experiment of the study and all its comparisons


SOURCE_TO_BE_TRAINED = "runs:/" + "0" * 32  # what a claim's comparison is planned with until its source is trained


@dataclass(frozen=True)
class Claim:
    """One entry of the technique study, planned: its config and the comparison it runs."""

    entry: Entry
    config: PipelineConfig  # base, then the entry's set, --quick's set and --set; registers nothing
    repeats: int
    comparison: Comparison | None  # vary or variants: checked now; with lr_grid, the LRs chosen when it runs
    source: PipelineConfig | None  # the transfer source's config, trained first
    ensemble: Ensemble | None = None  # an ensemble entry's plan, with its repeats
    searches: dict[str, Study] | None = None  # a search entry's plans (repeat 0's), by label

    @property
    def lr_grid(self) -> list[float] | None:
        return self.entry.lr_grid


@dataclass(frozen=True)
class TechniqueStudy:
    config: PipelineConfig  # what entries without a base start from (the study's run records it)
    claims: list[Claim]
    quick: bool
    parallel: int
    runner: str | None


TRAININGS = {  # how many networks a claim of each kind (trainlib.claims Entry.kind) trains, per repeat
    "ensemble": lambda claim: claim.ensemble.ensemble.size,
    "search": lambda claim: sum((s.search.budget() or 0) + 1 for s in claim.searches.values()),
    "comparison": lambda claim: len(claim.comparison.variants),
}


def trainings(claim: Claim) -> int:
    """How many networks a claim trains (for the command's header): its share of the study's cost."""
    grid = len(claim.lr_grid) * lr_repeats(claim) if claim.lr_grid else 0
    extra = len(claim.comparison.variants) * grid + (claim.source is not None) if claim.comparison else 0
    return TRAININGS[claim.entry.kind](claim) * claim.repeats + extra


def lr_repeats(claim: Claim) -> int:
    """Repeats of each LR of an entry's lr_grid: its lr_repeats, at most the claim's repeats (--repeats 2, say)."""
    return min(claim.entry.lr_repeats, claim.repeats)


def study(config_path: str | None, overrides: list[str], entries: str | Path | None = None,
          only: list[str] | None = None, repeats: int | None = None, quick: bool = False, max_parallel: int = 2,
          runner: str | None = None) -> TechniqueStudy:
    """`trainflow study`: every entry of `entries` (a folder of YAML files; default configs/study), or those named
    in `only`, loaded and checked with the configs it builds: a bad entry fails here, before anything runs."""
    folder = Path(entries) if entries else STUDY_ENTRIES
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ConfigError(f"study: no entries (*.yaml) in {folder}")
    named = {f.stem: f for f in files}
    for name in only or []:
        if name not in named:
            raise ConfigError(f"--only {name}: no such study entry; the entries are {', '.join(named)}")
    claims = []
    for path in [named[n] for n in only] if only else files:
        entry = load_entry(path)
        where = f"study entry {path.name}"
        try:
            base = load_config(entry.base_path(path.parent) or config_path, [])
            changes = {**entry.set, **(entry.quick.set if quick else {}), "name": STUDY_NAME,
                       "register.enabled": False}
            cfg = override(base, changes)
            cfg = override(cfg, dict(parse_set(o) for o in overrides)) if overrides else cfg
            source = None
            if entry.source is not None:  # trained from the same config with the source's keys
                source = override(cfg, {**entry.source, "transfer.source": None, "name": STUDY_NAME})
                cfg = override(cfg, {"transfer.source": SOURCE_TO_BE_TRAINED})
            n = repeats or (entry.quick.repeats if quick else entry.repeats)
            if n < 2:
                raise ConfigError(f"--repeats {n}: a verdict needs an interval; give 2 or more")
            comparison = planned_ensemble = searches = None
            if entry.ensemble is not None:
                settings = validate(entry.ensemble, EnsembleConfig, "ensemble")
                planned_ensemble = ensemble(cfg, settings, runner, n, entry.resplit)
            elif entry.searches is not None:
                searches = {name: tune(cfg, validate(raw, SearchConfig, f"search {name}"), runner)
                            for name, raw in entry.searches.items()}
            else:
                for lr in entry.lr_grid or [None]:  # every LR the entry may choose must make a valid config
                    at = override(cfg, {"optimizer.lr": lr}) if lr else cfg
                    comparison = compare(at, entry.vary, max_parallel, runner, n, combos=entry.variants)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        claims.append(Claim(entry, cfg, n, comparison, source, planned_ensemble, searches))
    base = override(load_config(config_path, []), {"name": STUDY_NAME, "register.enabled": False})
    return TechniqueStudy(base, claims, quick, max_parallel, runners.check(runner))
