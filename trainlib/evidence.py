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
from dataclasses import dataclass

from scipy.special import stdtrit  # the t quantile; scipy.stats takes 0.5 s longer to import

LEVEL = 0.95
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = "better", "worse", "no detectable difference", "too few repeats"
HIGHER, LOWER = "higher", "lower"  # the verdicts on a measure neither way of which is better (a weight norm)
HIGHER_IS_BETTER = ("accuracy", "f1", "precision", "recall")  # metrics named so; losses, epochs, seconds: lower


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


def higher_is_better(metric: str) -> bool:
    return any(word in metric for word in HIGHER_IS_BETTER)


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
    difference. Which side is good: `better` ("higher" or "lower"; by default from the metric's name); with
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
    higher = higher_is_better(metric) if better == AUTO else better == "higher"
    return Versus(metric, diff, BETTER if up == higher else WORSE)


def summarize(groups: dict[str, list[dict | None]], measures: Sequence[str]) -> list[dict]:
    """One row per group (a variant: its repeats' measures, None for a failed repeat): `label`, `n` (repeats
    that finished), `failed`, and per measure its `mean`, `std`, `ci_low`, `ci_high` (None where no repeat has it)."""
    rows = []
    for label, repeats in groups.items():
        done = [r for r in repeats if r is not None]
        row = {"label": label, "n": len(done), "failed": len(repeats) - len(done)}
        for m in measures:
            values = [r[m] for r in done if r.get(m) is not None]
            row[m] = _as_dict(estimate(values)) if values else None
        rows.append(row)
    return rows


def versus(groups: dict[str, list[dict | None]], baseline: str, measures: Sequence[str],
           better: dict[str, str | None] | None = None) -> list[dict]:
    """Every other group against `baseline`, measure by measure, on the repeats both finished (paired by
    position): `label`, `metric`, `n`, `diff` (mean of treatment - baseline), `ci_low`, `ci_high`, `verdict`.
    `better` gives a measure's good direction where its name does not (see `paired`)."""
    rows = []
    for label, repeats in groups.items():
        if label == baseline:
            continue
        for m in measures:
            pairs = [(a[m], b[m]) for a, b in zip(repeats, groups[baseline], strict=True)
                     if a is not None and b is not None and a.get(m) is not None and b.get(m) is not None]
            row = {"label": label, "metric": m, "n": len(pairs), "diff": None, "ci_low": None, "ci_high": None,
                   "verdict": TOO_FEW}
            if pairs:
                v = paired(m, [a for a, _ in pairs], [b for _, b in pairs], (better or {}).get(m, AUTO))
                row |= {"diff": v.diff.mean, "ci_low": v.diff.ci_low, "ci_high": v.diff.ci_high, "verdict": v.verdict}
            rows.append(row)
    return rows


def _as_dict(e: Estimate) -> dict:
    return {"mean": e.mean, "std": e.std, "ci_low": e.ci_low, "ci_high": e.ci_high}
