"""The tests behind a comparison's verdicts, on paired differences (treatment - baseline, repeat by repeat):
Student's paired t-test and its p-value, Holm's correction when several treatments face one baseline,
equivalence within a margin (two one-sided tests), the smallest difference the repeats could detect and the
repeats a margin needs (80% power), and the probability that the treatment beats the baseline.

Why these: the differences of paired repeats are close to normal (each is an average over thousands of test
samples), so the t-test is exact enough at the 3-10 repeats a CPU affords, where resampling methods have too
few values to resample (trainlib/evidence.py). Holm's step-down keeps the chance of any false "better" or
"worse" among k treatments at the level (like Bonferroni) and rejects at least as often, with no assumption on
how the tests depend on each other (they share the baseline). The probability of improvement is the share of
paired repeats in which the treatment is better (a tie counts half, Bouthillier et al. 2021), with Wilson's
score interval: a percentile bootstrap of n pairs can only give multiples of 1/n and collapses to a point when
every pair agrees (3 of 3: [1, 1]), where Wilson's interval keeps its level (3 of 3: [0.44, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import bdtrc, stdtr, stdtrit  # binomial tail; Student's t distribution and its quantile

ALPHA = 0.05  # the level of every test: 95% intervals, 5% false verdicts
POWER = 0.8  # the chance of detecting a difference as large as the one asked about
Z = 1.959963984540054  # the normal quantile of 0.975 (Wilson's interval)
MOST_REPEATS = 1000  # beyond this, `repeats_for` says None: no affordable number of repeats decides it


def mean_sd(diffs: Sequence[float]) -> tuple[float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0


def p_value(diffs: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test that the mean difference is 0 (None below 2 pairs). A constant difference
    (no spread) is certain: p 0 when it is not 0, 1 when it is."""
    n = len(diffs)
    if n < 2:
        return None
    mean, sd = mean_sd(diffs)
    if sd == 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * stdtr(n - 1, -abs(mean) / (sd / math.sqrt(n))))


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's adjusted p-values of a family of tests (None stays None and does not count): the i-th smallest of
    m p-values is multiplied by m - i + 1, kept at least the one before it, at most 1. A test rejects at level a
    when its adjusted p is below a."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def equivalent(diffs: Sequence[float], margin: float, alpha: float = ALPHA) -> bool:
    """Two one-sided tests at `alpha`: the mean difference lies within (-margin, +margin), i.e. its 1 - 2 alpha
    (90% at 0.05) t interval does. Needs 2 pairs."""
    n = len(diffs)
    if n < 2:
        return False
    mean, sd = mean_sd(diffs)
    half = stdtrit(n - 1, 1 - alpha) * sd / math.sqrt(n)
    return -margin < mean - half and mean + half < margin


def detectable(sd: float, n: int) -> float | None:
    """The smallest true difference n paired repeats with this spread of differences detect with POWER at ALPHA
    (two-sided): (t(1 - ALPHA/2) + t(POWER)) sd / sqrt(n), t with n - 1 degrees of freedom."""
    if n < 2:
        return None
    return float((stdtrit(n - 1, 1 - ALPHA / 2) + stdtrit(n - 1, POWER)) * sd / math.sqrt(n))


def repeats_for(sd: float, difference: float) -> int | None:
    """How many paired repeats detect a true `difference` with POWER at ALPHA, given this spread of differences;
    None beyond MOST_REPEATS."""
    if difference <= 0:
        return None
    return next((n for n in range(2, MOST_REPEATS + 1) if detectable(sd, n) <= difference), None)


def improvement(diffs: Sequence[float], higher: bool = True) -> tuple[float, float, float]:
    """P(treatment better than baseline) over the paired repeats, a tie counting half (better: higher unless
    `higher` is False), with Wilson's 95% score interval -> (p, low, high)."""
    n = len(diffs)
    wins = sum((d > 0) if higher else (d < 0) for d in diffs) + 0.5 * sum(d == 0 for d in diffs)
    p = wins / n
    centre, half = p + Z * Z / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    scale = 1 + Z * Z / n
    return p, max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def mcnemar(b: int, c: int) -> float:
    """McNemar's exact test on one test set (Dietterich 1998): of the samples two classifiers disagree on, `b`
    the new one gets right and the old one wrong, `c` the other way. -> the one-sided p that the new one is
    better: P(X >= b) for X ~ Binomial(b + c, 1/2) (1 with no disagreement)."""
    if b + c == 0 or b == 0:
        return 1.0
    return float(bdtrc(b - 1, b + c, 0.5))


def bootstrap_better(right: int, n: int, right_old: int, n_old: int, draws: int = 20000, seed: int = 0) -> float:
    """Where two classifiers were scored on different test samples (McNemar needs the same ones): the one-sided
    bootstrap p that the new one (`right` of `n` correct) is no better than the old one (`right_old` of `n_old`):
    the share of draws, each test set resampled with replacement on its own, in which the new accuracy is not
    above the old. Resampling n outcomes of which a share q is right draws Binomial(n, q) right ones, so the draws
    are exact and need no per-sample arrays."""
    rng = np.random.default_rng(seed)
    new = rng.binomial(n, right / n, draws) / n
    old = rng.binomial(n_old, right_old / n_old, draws) / n_old
    return float((1 + np.count_nonzero(new <= old)) / (draws + 1))
