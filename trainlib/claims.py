"""The technique study's entries: one claim each, as data (configs/study/*.yaml), and the verdict on it.

An entry names the claim in one sentence, the config it is tested on (a regime), the key(s) varied (the first
value of each is the baseline, the others treatments), the measure the claim is about, the direction it predicts,
and how the comparison is fair. The study (flows/technique_study.py) runs each entry as a `trainflow compare`
with repeats and judges every treatment on the paired 95% interval of its difference to the baseline:
`supported` when the interval lies wholly on the predicted side of zero, `contradicted` when wholly on the other,
`inconclusive` when it holds zero (or there are too few repeats for an interval).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainlib.config import validate
from trainlib.errors import ConfigError
from trainlib.evidence import EQUIVALENT, Contrast, Estimate, Group
from trainlib.inference import ALPHA
from trainlib.measures import RUN_MEASURES
from trainlib.overrides import read_yaml

SUPPORTED, CONTRADICTED, INCONCLUSIVE, FAILED = "supported", "contradicted", "inconclusive", "failed"
KIND_MEASURES = ("test_accuracy", "best_val_accuracy")  # what ensemble and search entries can be measured by


class Quick(BaseModel):
    """What `--quick` changes: fewer repeats, and config keys set over the entry's (fewer epochs, say)."""

    model_config = ConfigDict(extra="forbid")
    repeats: int = Field(3, ge=2, description="repeats of each variant with --quick (3: the fewest whose interval can "
                                              "decide a clear difference)")
    set: dict[str, Any] = Field(default_factory=dict, description="config keys set with --quick, over `set`")


class Entry(BaseModel):
    """One claim of the technique study (a YAML file in configs/study/, named by its file)."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""  # the file's stem, filled in by load_entry
    technique: str = Field(description="the technique, as the report names it")
    claim: str = Field(min_length=10, description="what the technique is said to do, in one sentence")
    base: str | None = Field(None, description="the config (a regime) the claim is tested on, relative to the "
                                               "entry's folder; default: the study's --config, else the defaults")
    set: dict[str, Any] = Field(default_factory=dict, description="config keys set over the base (dotted keys)")
    vary: dict[str, list[Any]] = Field(default_factory=dict, description="key -> values, the grid of them the "
                                                                         "variants; the first combination the baseline")
    variants: list[dict[str, Any]] | None = Field(None, description="instead of vary: the variants as dicts of "
                                                                    "config keys, the first the baseline")
    measure: str = Field(description="what the claim is about: " + ", ".join(RUN_MEASURES))
    direction: Literal["higher", "lower", "same"] = Field(
        description="the treatment's measure, as the claim predicts it; same: within the measure's equivalence "
                    "margin (a claim that a technique does not hurt)")
    fair: str = Field(min_length=10, description="why the comparison is fair (a shared or per-variant LR, ...)")
    ensemble: dict[str, Any] | None = Field(None, description="instead of vary: an ensemble (its settings, as an "
                                                             "--ensemble file) against its members")
    against: Literal["best member", "mean member"] = Field(
        "best member", description="ensemble entries: the baseline, the member with the best validation accuracy "
                                   "or the members' mean")
    searches: dict[str, dict[str, Any]] | None = Field(None, description="instead of vary: label -> a search (as a "
                                                                         "--search file), the first the baseline; "
                                                                         "each repeat moves every seed by one")
    source: dict[str, Any] | None = Field(None, description="transfer learning: config keys set over the base to "
                                                           "train a source model first (registered nowhere); every "
                                                           "variant starts from it as its transfer.strategy says")
    lr_grid: list[float] | None = Field(None, description="each variant gets its own optimizer.lr from these: "
                                                          "the best mean model_val_accuracy over lr_repeats")
    lr_repeats: int = Field(2, ge=1, description="repeats of each LR of lr_grid (paired seeds, resplit as the "
                                                 "entry's); at most the entry's repeats")
    repeats: int = Field(5, ge=2, description="repeats of each variant (paired seeds)")
    resplit: bool = Field(True, description="repeat i also on split seed + i: the claim is tested across splits "
                                            "(and, in the label-noise regime, across the flipped rows)")
    quick: Quick = Field(default_factory=Quick)

    @property
    def kind(self) -> str:
        """What the entry compares, by the one of vary, variants, ensemble, searches it gives: `comparison` (vary or
        variants), `ensemble` or `search` (the keys of the study's registries of kinds)."""
        return "ensemble" if self.ensemble else "search" if self.searches else "comparison"

    @model_validator(mode="after")
    def _check(self):
        if self.measure not in RUN_MEASURES:
            raise ConfigError(f"measure: {self.measure!r} is not a measure; valid: {', '.join(RUN_MEASURES)}")
        given = [k for k in ("vary", "variants", "ensemble", "searches") if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError("vary, variants, ensemble, searches: give one of them (what is compared)")
        if (self.ensemble or self.searches) and self.measure not in KIND_MEASURES:
            raise ConfigError(f"measure: {self.measure!r}: ensemble and search entries are measured by "
                              f"{' or '.join(KIND_MEASURES)}")
        if self.ensemble and self.measure != "test_accuracy":
            raise ConfigError("measure: an ensemble entry is measured by test_accuracy (the ensemble has no "
                              "validation epochs of its own)")
        if self.searches is not None and len(self.searches) < 2:
            raise ConfigError("searches: give a baseline search and at least one other")
        if self.vary and any(len(v) < 2 for v in self.vary.values()):
            raise ConfigError("vary: give each key a baseline value and at least one treatment value")
        if self.variants is not None and len(self.variants) < 2:
            raise ConfigError("variants: give a baseline and at least one treatment")
        if self.lr_grid is not None and "optimizer.lr" in {*self.vary, *(k for v in self.variants or [] for k in v)}:
            raise ConfigError("lr_grid: chooses optimizer.lr per variant; it cannot also be varied")
        if self.lr_grid is not None and (len(self.lr_grid) < 2 or min(self.lr_grid) <= 0):
            raise ConfigError("lr_grid: give two or more learning rates above 0")
        return self

    def base_path(self, folder: Path) -> Path | None:
        return (folder / self.base).resolve() if self.base else None


def load_entry(path: str | Path) -> Entry:
    """An entry from its YAML file: unknown keys and wrong values are one readable error naming the file."""
    path = Path(path)
    raw = read_yaml(path, "study entry")
    if isinstance(raw, dict) and "name" in raw:
        raise ConfigError(f"study entry {path.name}: name: unknown key (an entry is named by its file)")
    entry = validate(raw, Entry, f"study entry {path.name}")
    entry = entry.model_copy(update={"name": path.stem})
    if entry.base and not entry.base_path(path.parent).is_file():
        raise ConfigError(f"study entry {path.name}: base: no such file: {entry.base} (relative to {path.parent})")
    return entry


def choose_lr(summary: list[Group], variants: dict[str, dict[str, Any]]) -> float:
    """The optimizer.lr of the variant (`variants`: each one's overrides, by its group) with the best mean
    model_val_accuracy: the validation accuracy of the model as it is tested (without early stopping, the last
    epoch's, not the best epoch's)."""
    best = max((s for s in summary if s.n), key=lambda s: s.estimates["model_val_accuracy"].mean)
    return float(variants[best.label]["optimizer.lr"])


def verdict(direction: str, c: Contrast) -> str:
    """The claim's verdict from the paired test of (treatment - baseline) on its measure, corrected with the
    entry's other treatments (Holm): supported or contradicted when the difference is significant and its sign
    is, or is not, the predicted direction; else inconclusive. A claim of the same measure (`same`) is supported
    when the difference is equivalent to none (its 90% interval inside the margin), contradicted when it is
    significant and at least the margin."""
    significant = c.p_holm is not None and c.p_holm < ALPHA and bool(c.diff)
    if direction == "same":
        if c.verdict == EQUIVALENT:
            return SUPPORTED
        return CONTRADICTED if significant and c.margin is not None and abs(c.diff) >= c.margin else INCONCLUSIVE
    if not significant:
        return INCONCLUSIVE
    return SUPPORTED if (c.diff > 0) == (direction == "higher") else CONTRADICTED


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval (None: one repeat, no interval; a mean of None: no value)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, e: Estimate | None) -> Interval:
        return cls(e.mean, e.ci_low, e.ci_high) if e else cls(None, None, None)


@dataclass(frozen=True)
class Arm:
    """A variant of a claim's comparison (its label) and its estimate of the claim's measure."""

    label: str
    estimate: Interval
    cpu: Interval | None = None  # its training's CPU seconds (the cost beside the measure)

    def json(self) -> dict[str, Any]:
        return {"label": self.label, **asdict(self.estimate), "cpu_seconds": asdict(self.cpu) if self.cpu else None}


@dataclass(frozen=True)
class Treated:
    """A treatment against the baseline on the claim's measure: its estimate, the paired difference over `n`
    repeats and the claim's verdict on it."""

    arm: Arm
    diff: Interval
    n: int
    verdict: str
    p_holm: float | None = None  # the paired t-test's p, Holm-corrected over the entry's treatments
    better: Interval | None = None  # P(treatment better than the baseline) with its interval
    test: str | None = None  # the comparison's verdict: better, worse, equivalent, no detectable difference
    repeats_needed: int | None = None  # paired repeats that detect a difference of the measure's margin (80% power)

    def json(self) -> dict[str, Any]:
        return self.arm.json() | {"diff": asdict(self.diff), "n": self.n, "verdict": self.verdict,
                                  "p_holm": self.p_holm, "p_better": asdict(self.better) if self.better else None,
                                  "test": self.test, "repeats_needed": self.repeats_needed}


@dataclass(frozen=True)
class Judgement:
    """The claim judged: the baseline, every treatment, and the one the claim holds worst for (`worst`), whose
    verdict is the claim's."""

    baseline: Arm
    treatments: list[Treated]

    @property
    def worst(self) -> Treated:
        order = {CONTRADICTED: 0, INCONCLUSIVE: 1, SUPPORTED: 2}
        return min(self.treatments, key=lambda t: order[t.verdict])

    def json(self) -> dict[str, Any]:
        w = self.worst
        return {"baseline": self.baseline.json(), "treatment": w.arm.json(), "diff": asdict(w.diff),
                "verdict": w.verdict, "n": w.n, "p_holm": w.p_holm,
                "p_better": asdict(w.better) if w.better else None, "test": w.test, "repeats_needed": w.repeats_needed,
                "treatments": [t.json() for t in self.treatments]}


def judge(entry: Entry, summary: list[Group], versus: list[Contrast], baseline: str) -> Judgement:
    """The claim judged on a comparison's `summary` and `versus` rows (trainlib.evidence): the baseline's and each
    treatment's estimate of the entry's measure, their paired difference and the verdict. With several treatments
    the claim must hold for each, so its verdict is the one it holds worst for."""
    by_label = {s.label: s for s in summary}

    def arm(label: str) -> Arm:
        found = by_label[label].estimates
        return Arm(label, Interval.of(found.get(entry.measure)), Interval.of(found.get("train_cpu_seconds")))

    treatments = [Treated(arm(v.label),
                          Interval(v.diff, v.ci_low, v.ci_high), v.n, verdict(entry.direction, v), v.p_holm,
                          Interval(v.p_better, v.p_better_low, v.p_better_high) if v.p_better is not None else None,
                          v.verdict, v.repeats_needed)
                  for v in versus if v.metric == entry.measure]
    if not treatments:
        raise ValueError(f"{entry.name}: the comparison has no treatment measured by {entry.measure}")
    return Judgement(arm(baseline), treatments)
