"""The tests behind the verdicts (trainlib/inference.py) against scipy.stats and cases worked by hand, and how
they change the verdicts of a comparison (trainlib/evidence.py): Holm's correction, equivalence, power, the
probability of improvement."""

import math

import pytest
from scipy import stats

from trainlib import inference
from trainlib.evidence import BETTER, EQUIVALENT, NO_DIFFERENCE, contrasts, versus


def test_the_p_value_is_the_paired_t_tests():
    treatment, baseline = [0.91, 0.88, 0.93, 0.90], [0.89, 0.88, 0.90, 0.86]
    diffs = [a - b for a, b in zip(treatment, baseline, strict=True)]
    assert inference.p_value(diffs) == pytest.approx(stats.ttest_rel(treatment, baseline).pvalue, rel=1e-9)
    assert inference.p_value([0.02, 0.02, 0.02]) == 0.0 and inference.p_value([0.0, 0.0]) == 1.0  # no spread
    assert inference.p_value([0.02]) is None


def test_holm_multiplies_the_ith_smallest_p_by_the_tests_left_and_keeps_them_in_order():
    # 0.01 * 3 = 0.03; 0.02 * 2 = 0.04; 0.03 * 1 = 0.03, raised to 0.04 (step-down keeps the order)
    assert inference.holm([0.03, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert inference.holm([0.5, 0.9]) == [1.0, 1.0]


def test_equivalence_needs_the_90_percent_interval_inside_the_margin():
    tight = [0.001, -0.002, 0.002, 0.0, -0.001]
    mean, sd = inference.mean_sd(tight)
    half = stats.t.ppf(0.95, 4) * sd / math.sqrt(5)
    assert inference.equivalent(tight, 0.01) and abs(mean) + half < 0.01
    assert not inference.equivalent(tight, abs(mean) + half * 0.99)  # the margin just inside the interval's end
    assert not inference.equivalent([0.03, -0.03, 0.02], 0.01)  # too noisy to say


def test_power_gives_the_smallest_detectable_difference_and_the_repeats_a_margin_needs():
    sd = 0.01
    expected = (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * sd / math.sqrt(5)
    assert inference.detectable(sd, 5) == pytest.approx(expected)
    n = inference.repeats_for(sd, 0.01)
    assert inference.detectable(sd, n) <= 0.01 < inference.detectable(sd, n - 1)
    assert inference.repeats_for(sd, 1e-6) is None  # beyond any affordable number of repeats


def test_the_probability_of_improvement_counts_ties_half_with_wilsons_interval():
    p, low, high = inference.improvement([0.01, 0.02, 0.0, -0.01])  # 2 wins, 1 tie, 1 loss
    assert p == pytest.approx(2.5 / 4)
    assert inference.improvement([0.01, 0.02, 0.03])[1:] == pytest.approx((0.4385, 1.0), abs=1e-4)  # 3 of 3
    assert inference.improvement([-0.1, -0.2], higher=False)[0] == 1.0  # a lower loss is the better


def test_three_treatments_against_one_baseline_are_corrected_together():
    base = [0.90, 0.85, 0.88, 0.92, 0.87]
    # an uncorrected p of about 0.02: "better" alone, not among three (Holm multiplies the smallest p by 3)
    small = [b + d for b, d in zip(base, [0.004, 0.015, 0.001, 0.013, 0.009], strict=True)]  # p 0.033
    alone = contrasts({"small": (small, base)}, "test_accuracy")[0]
    assert alone.p < 0.05 and alone.verdict == BETTER
    family = contrasts({"small": (small, base), "same": (base, base), "noise": ([b + 0.01 * (-1) ** i for i, b in
                                                                               enumerate(base)], base)},
                       "test_accuracy", margin=0.001)
    corrected = family[0]
    assert corrected.p == alone.p and corrected.p_holm == pytest.approx(min(1, 3 * alone.p))
    assert corrected.p_holm > 0.05 and corrected.verdict == NO_DIFFERENCE
    assert family[1].verdict == EQUIVALENT  # identical repeats: inside any margin


def test_a_comparison_reports_power_and_the_probability_of_improvement():
    groups = {"sgd": [{"test_accuracy": a} for a in (0.90, 0.85, 0.88)],
              "adam": [{"test_accuracy": a} for a in (0.905, 0.86, 0.87)]}
    (c,) = versus(groups, "sgd", ["test_accuracy"])
    assert c.verdict == NO_DIFFERENCE and c.margin == 0.01 and c.p_better == pytest.approx(2 / 3)
    assert c.detectable > abs(c.diff) and c.repeats_needed > 3  # 3 repeats could not tell; this many could
