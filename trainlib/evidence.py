"""Evidence from repeated runs: a mean with its 95% confidence interval, and a paired comparison with a verdict.

Repeats are paired: repeat i of every variant trains with the same seeds, so two variants are compared on their
per-repeat differences, and what the seed does to both cancels out. The interval is Student's t on those
differences (a paired t interval). Not a bootstrap: with the 3-10 repeats a CPU affords, a percentile bootstrap
cannot reach beyond the few values it resamples and gives intervals too narrow for their level; the t interval
is exact for normal differences and widens as it should when n is small.

A verdict needs an interval: one repeat is an anecdote (`too few repeats`), whatever its difference. Where
several treatments face one baseline, their verdicts are corrected together (Holm, trainlib/inference.py): a
`better` or `worse` means the Holm-adjusted p of the paired t-test is under 5%. A difference whose 90% interval
lies inside the measure's equivalence margin is `equivalent`; `no detectable difference` is left for intervals
wider than that: the repeats could not tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.special import stdtrit  # the t quantile; scipy.stats takes 0.5 s longer to import

from trainlib import inference, monitor
from trainlib.monitor import HIGHER, LOWER

LEVEL = 0.95
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = "better", "worse", "no detectable difference", "too few repeats"
EQUIVALENT = "equivalent"  # the 90% interval of the difference inside the equivalence margin (two one-sided tests)
# The equivalence margin by kind of metric (trainlib/monitor.py): a difference inside +- this is too small for a
# user to act on (a point of accuracy or F1, 0.02 of cross-entropy, one epoch); seconds have none.
MARGINS = {"accuracy": 0.01, "f1": 0.01, "precision": 0.01, "recall": 0.01, "loss": 0.02, "epochs": 1.0,
           "ece": 0.01}
# HIGHER, LOWER (trainlib/monitor.py) are also the verdicts on a measure neither way of which is better (a weight norm)


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` repeats with its sample standard deviation and 95% interval (None below 2 repeats)."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    def excludes_zero(self) -> bool:
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    def json(self) -> dict[str, float | None]:
        return {"mean": self.mean, "std": self.std, "ci_low": self.ci_low, "ci_high": self.ci_high}


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, standard deviation and the t interval of `values` (independent repeats)."""
    xs = [float(v) for v in values]
    if not xs or any(math.isnan(x) for x in xs):
        raise ValueError(f"estimate needs numbers, got {values!r}")
    n, mean = len(xs), sum(xs) / len(xs)
    if n < 2:
        return Estimate(n, mean, None, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = stdtrit(n - 1, (1 + LEVEL) / 2) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Versus:
    """Treatment against baseline on one metric: the paired difference (treatment - baseline) and the verdict."""

    metric: str
    diff: Estimate
    verdict: str


AUTO = "auto"


def paired(metric: str, treatment: Sequence[float], baseline: Sequence[float], better: str | None = AUTO) -> Versus:
    """Repeat i of `treatment` against repeat i of `baseline` (same seeds), alone (no family to correct for):
    the difference's estimate and the verdict of `contrasts`."""
    if len(treatment) != len(baseline):
        raise ValueError(f"{metric}: paired repeats need as many of each, got {len(treatment)} and {len(baseline)}")
    diff = estimate([a - b for a, b in zip(treatment, baseline, strict=True)])
    return Versus(metric, diff, contrasts({"": (treatment, baseline)}, metric, better)[0].verdict)


Repeats = list[dict[str, float | None] | None]  # a group's repeats: each one's measure -> value, None if it failed


@dataclass(frozen=True)
class Group:
    """A group of paired repeats (a variant, an ensemble, a member) summarized: `n` repeats finished, `failed`
    did not, and each measure's estimate over the finished ones (None where no repeat has the measure)."""

    label: str
    n: int
    failed: int
    estimates: dict[str, Estimate | None]

    def json(self) -> dict[str, Any]:
        """`label`, `n`, `failed`, then per measure its `mean`, `std`, `ci_low`, `ci_high` (or None)."""
        return {"label": self.label, "n": self.n, "failed": self.failed,
                **{m: e.json() if e else None for m, e in self.estimates.items()}}


@dataclass(frozen=True)
class Contrast:
    """A group against the baseline on one measure, over the `n` repeats both finished (paired by position): the
    mean difference (treatment - baseline) with its 95% interval, the paired t-test's p and its Holm-adjusted p
    within the family (every treatment facing this baseline on this measure), the probability the treatment is
    better with its interval, the equivalence margin, the smallest difference these repeats detect (80% power) and
    the repeats the margin needs, and the verdict (better, worse, equivalent, no detectable difference, too few
    repeats; higher or lower for a measure neither way of which is better)."""

    label: str
    metric: str
    n: int
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    p: float | None = None
    p_holm: float | None = None
    p_better: float | None = None
    p_better_low: float | None = None
    p_better_high: float | None = None
    margin: float | None = None
    detectable: float | None = None
    repeats_needed: int | None = None

    def json(self) -> dict[str, Any]:
        return asdict(self)


def margin_of(metric: str, margins: dict[str, float] | None = None) -> float | None:
    """The equivalence margin of `metric`: the one given for it, else its kind's (MARGINS), else None."""
    if margins and metric in margins:
        return margins[metric]
    return MARGINS.get(metric.rsplit("_", 1)[-1])


def contrasts(pairs: dict[str, tuple[Sequence[float], Sequence[float]]], metric: str, better: str | None = AUTO,
              margin: float | None = None, alpha: float = inference.ALPHA) -> list[Contrast]:
    """Each label's treatment against the baseline on `metric` (label -> (treatment's repeats, baseline's, paired
    by position)), the labels one family for Holm's correction. `better`: which way is good ("higher", "lower",
    by default the metric's; None: neither, the verdict is higher or lower); `margin`: the equivalence margin
    (default the metric's kind's, MARGINS); `alpha`: the level of the family's verdicts (a sequential design's look
    tests at less, trainlib/sequential.py)."""
    margin = margin if margin is not None else margin_of(metric)
    diffs = {label: [a - b for a, b in zip(t, base, strict=True)] for label, (t, base) in pairs.items()}
    adjusted = dict(zip(diffs, inference.holm([inference.p_value(d) for d in diffs.values()]), strict=True))
    way = None if better is None else (monitor.better(metric) if better == AUTO else better)
    out = []
    for label, d in diffs.items():
        if not d:
            out.append(Contrast(label, metric, 0, None, None, None, TOO_FEW, margin=margin))
            continue
        e, (_, sd) = estimate(d), inference.mean_sd(d)
        p_better = inference.improvement(d, way != LOWER)
        verdict = _verdict(d, adjusted[label], way, margin, alpha)
        out.append(Contrast(label, metric, len(d), e.mean, e.ci_low, e.ci_high, verdict, inference.p_value(d),
                            adjusted[label], *p_better, margin, inference.detectable(sd, len(d)),
                            inference.repeats_for(sd, margin) if margin else None))
    return out


def _verdict(diffs: list[float], p_adjusted: float | None, way: str | None, margin: float | None,
             alpha: float) -> str:
    if p_adjusted is None:
        return TOO_FEW
    if p_adjusted < alpha:
        up = sum(diffs) > 0
        if way is None:
            return HIGHER if up else LOWER
        return BETTER if up == (way == HIGHER) else WORSE
    if margin is not None and inference.equivalent(diffs, margin, alpha):
        return EQUIVALENT
    return NO_DIFFERENCE


def summarize(groups: dict[str, Repeats], measures: Sequence[str]) -> list[Group]:
    """One summary per group (a variant: its repeats' measures, None for a failed repeat)."""
    out = []
    for label, repeats in groups.items():
        done = [r for r in repeats if r is not None]
        estimates = {}
        for m in measures:
            values = [r[m] for r in done if r.get(m) is not None]
            estimates[m] = estimate(values) if values else None
        out.append(Group(label, len(done), len(repeats) - len(done), estimates))
    return out


def versus(groups: dict[str, Repeats], baseline: str, measures: Sequence[str],
           better: dict[str, str | None] | None = None, margins: dict[str, float] | None = None,
           alpha: float = inference.ALPHA) -> list[Contrast]:
    """Every other group against `baseline`, measure by measure, on the repeats both finished (paired by
    position); on each measure the other groups are one family (Holm). `better` gives a measure's good direction
    where its name does not (see `contrasts`); `margins` a measure's equivalence margin (default its kind's); `alpha`
    the verdicts' level."""
    out = []
    for m in measures:
        pairs = {}
        for label, repeats in groups.items():
            if label == baseline:
                continue
            both = [(a[m], b[m]) for a, b in zip(repeats, groups[baseline], strict=True)
                    if a is not None and b is not None and a.get(m) is not None and b.get(m) is not None]
            pairs[label] = ([a for a, _ in both], [b for _, b in both])
        out += contrasts(pairs, m, (better or {}).get(m, AUTO), margin_of(m, margins), alpha)
    order = {label: i for i, label in enumerate(groups)}
    return sorted(out, key=lambda c: order[c.label])  # by group, then measure: as before
