"""Evidence from repeated runs: a mean with its 95% confidence interval, and a paired comparison with a verdict.

Repeats are paired: repeat i of every variant trains with the same seeds, so two variants are compared on their
per-repeat differences, and what the seed does to both cancels out. The interval is Student's t on those
differences (a paired t interval). Not a bootstrap: with the 3-10 repeats a CPU affords, a percentile bootstrap
cannot reach beyond the few values it resamples and gives intervals too narrow for their level; the t interval
is exact for normal differences and widens as it should when n is small.

A verdict needs an interval: one repeat is an anecdote (`too few repeats`), whatever its difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.special import stdtrit  # the t quantile; scipy.stats takes 0.5 s longer to import

from trainlib import monitor
from trainlib.monitor import HIGHER, LOWER

LEVEL = 0.95
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = "better", "worse", "no detectable difference", "too few repeats"
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
    """Repeat i of `treatment` against repeat i of `baseline` (same seeds). `better` when the interval of the
    difference lies wholly on the good side of zero for `metric`, `worse` on the bad side, else no detectable
    difference. Which side is good: `better` ("higher" or "lower"; by default the metric's, trainlib/monitor.py); with
    `better` None neither is, and the verdict is `higher` or `lower`."""
    if len(treatment) != len(baseline):
        raise ValueError(f"{metric}: paired repeats need as many of each, got {len(treatment)} and {len(baseline)}")
    diff = estimate([a - b for a, b in zip(treatment, baseline, strict=True)])
    if diff.ci_low is None:
        return Versus(metric, diff, TOO_FEW)
    if not diff.excludes_zero():
        return Versus(metric, diff, NO_DIFFERENCE)
    up = diff.ci_low > 0
    if better is None:
        return Versus(metric, diff, HIGHER if up else LOWER)
    higher = (monitor.better(metric) if better == AUTO else better) == HIGHER
    return Versus(metric, diff, BETTER if up == higher else WORSE)


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
    mean difference (treatment - baseline) with its interval, and the verdict."""

    label: str
    metric: str
    n: int
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str

    def json(self) -> dict[str, Any]:
        return asdict(self)


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
           better: dict[str, str | None] | None = None) -> list[Contrast]:
    """Every other group against `baseline`, measure by measure, on the repeats both finished (paired by
    position). `better` gives a measure's good direction where its name does not (see `paired`)."""
    out = []
    for label, repeats in groups.items():
        if label == baseline:
            continue
        for m in measures:
            pairs = [(a[m], b[m]) for a, b in zip(repeats, groups[baseline], strict=True)
                     if a is not None and b is not None and a.get(m) is not None and b.get(m) is not None]
            if not pairs:
                out.append(Contrast(label, m, 0, None, None, None, TOO_FEW))
                continue
            v = paired(m, [a for a, _ in pairs], [b for _, b in pairs], (better or {}).get(m, AUTO))
            out.append(Contrast(label, m, len(pairs), v.diff.mean, v.diff.ci_low, v.diff.ci_high, v.verdict))
    return out
