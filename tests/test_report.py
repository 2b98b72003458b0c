"""The gate's decision and wording, and the one rounding rule of every table and summary (pure functions)."""

import pytest

from tasks.registry.register import decide
from tasks.results import Registration
from tasks.wording import difference, markdown_row, rounded, rounded_row, shown, with_interval
from trainlib.config import RegisterConfig

GATE = RegisterConfig(min_test_accuracy=0.9, min_delta=0.001, gate="delta")


def test_a_tie_with_the_champion_stays_challenger():
    gate = decide(1.0, GATE, 3, 1.0)
    assert not gate.passed and gate.outcome == "not_better"
    assert gate.reason == "kept as challenger (not better than version 3's 1.0000 by 0.001)"


def test_better_by_no_more_than_min_delta_stays_challenger():
    assert not decide(0.9820, GATE, 3, 0.9815).passed  # +0.0005
    assert not decide(0.9815 + 0.001, GATE, 3, 0.9815).passed  # exactly min_delta is not more than it
    assert not decide(0.97, GATE, 3, 0.98).passed  # worse


def test_strictly_better_by_more_than_min_delta_is_promoted():
    gate = decide(0.9852, GATE, 3, 0.9815)
    assert gate.passed and gate.outcome == "promoted" and gate.champion_version == 3
    assert gate.reason == "promoted to @champion (0.9852 > version 3's 0.9815)"


def test_the_first_version_above_the_minimum_is_promoted():
    gate = decide(0.95, GATE, None, None)
    assert gate.passed and "promoted to @champion (0.9500 >= register.min_test_accuracy 0.9" in gate.reason


def test_below_the_minimum_stays_challenger_even_without_a_champion():
    for champion in ((None, None), (2, 0.5)):
        gate = decide(0.85, GATE, *champion)
        assert not gate.passed and gate.outcome == "below_minimum"
        assert gate.reason == "kept as challenger: below the gate (0.8500 < register.min_test_accuracy 0.9)"


def test_min_delta_zero_still_refuses_a_tie():
    assert not decide(0.98, RegisterConfig(min_delta=0), 1, 0.98).passed
    assert decide(0.9801, RegisterConfig(min_delta=0), 1, 0.98).passed


def test_the_default_min_delta_is_above_zero_and_below_one_digits_test_sample():
    assert 0 < RegisterConfig().min_delta < 1 / 270  # digits' test split: 15% of 1797 samples


def test_the_registration_line_never_says_gate_failed():
    registered = Registration("x", "digits-cnn", 4, "challenger", decide(1.0, GATE, 3, 1.0))
    line = registered.line()
    assert line == "registered digits-cnn version 4: kept as challenger (not better than version 3's 1.0000 by 0.001)"
    assert Registration.from_json(registered.json()) == registered  # what a summary carries reads back the same
    off = Registration("models:/m-1")
    assert off.line().startswith("not registered") and "models:/m-1" in off.line() and off.outcome == "not_registered"
    assert Registration.from_json(off.json()) == off


@pytest.mark.parametrize("key, value, expected", [
    ("test_accuracy", 0.98765432, 0.9877),
    ("val_loss", 0.0007177873855741623, 0.0007),
    ("test_f1", 1.0, 1.0),
    ("lr", 0.0007177873855741623, 0.000718),
    ("optimizer.lr", 0.012345678, 0.0123),
    ("model.dropout", 0.31415926, 0.314),
    ("seconds", 12.3456, 12.35),
    ("train_seconds", 0.04, 0.04),
    ("epoch_seconds", 2.0, 2.0),
    ("best_epoch", 7.0, 7),
    ("epochs", 12, 12),
    ("state", "complete", "complete"),
    ("weight", None, None),
])
def test_one_rounding_rule(key, value, expected):
    result = rounded(value, key)
    assert result == expected and type(result) is type(expected)


def test_tables_show_metrics_with_four_decimals_and_learning_rates_with_three_digits():
    assert [shown(v, "test_accuracy") for v in (1.0, 0.5, 0.98765)] == ["1.0000", "0.5000", "0.9877"]
    assert shown(0.0007177873855741623, "optimizer.lr") == "0.000718"
    assert shown(1e-5, "optimizer.lr") == "1e-05"
    assert shown(12.3456, "seconds") == "12.3" and shown(7.0, "best_epoch") == "7"
    assert shown(None, "weight") == "-" and shown(3, "epochs") == "3" and shown("sgd", "variant") == "sgd"
    row = {"variant": "optimizer.lr=0.01", "test_accuracy": 1.0, "seconds": 2.26, "weight": None}
    keys = ("variant", "test_accuracy", "seconds", "weight")
    assert markdown_row(row, keys) == "| optimizer.lr=0.01 | 1.0000 | 2.3 | - |"


def test_numpy_floats_follow_the_same_rule():
    import numpy as np

    assert rounded(np.float32(0.987654), "test_accuracy") == 0.9877
    assert rounded_row({"lr": np.float64(0.00071778), "epoch": 3}) == {"lr": 0.000718, "epoch": 3}


def test_means_read_with_their_half_interval_and_differences_with_their_interval():
    from dataclasses import replace

    from trainlib.evidence import Contrast, Estimate

    assert with_interval(Estimate(3, 0.97123, 0.01, 0.96, 0.98246), "test_accuracy") == "0.9712 ± 0.0112"
    assert with_interval(Estimate(1, 0.97, None, None, None), "test_accuracy") == "0.9700"
    assert with_interval(None, "test_accuracy") == "-"
    c = Contrast("adam", "test_loss", 3, -0.02, -0.031, 0.00449, "no detectable difference")
    assert difference(c) == "-0.0200 [-0.0310, +0.0045]"
    assert difference(replace(c, ci_low=None, ci_high=None)) == "-0.0200"
    assert difference(replace(c, diff=None)) == "-"


TESTED = RegisterConfig(min_test_accuracy=0.9, gate="mcnemar", alpha=0.05)


def test_a_tested_gate_promotes_only_a_gain_beyond_the_test_sets_noise():
    from scipy import stats

    # 9 samples right where the champion was wrong, 1 the other way: binomial(10, 1/2) tail P(X >= 9) = 11/1024
    gate = decide(0.98, TESTED, 3, 0.95, (9, 1, 270))
    assert gate.p == pytest.approx(11 / 1024) == pytest.approx(stats.binomtest(9, 10, alternative="greater").pvalue)
    assert gate.passed and gate.test == "mcnemar" and (gate.b, gate.c) == (9, 1)
    assert gate.reason == ("promoted to @champion (better than version 3 on the same 270 test samples: 9 right "
                           "where it was wrong, 1 the other way; McNemar p 0.0107 < 0.05)")
    # higher accuracy by 3 samples out of 5 disagreements: what the delta gate would promote, noise to McNemar
    noise = decide(0.9852, TESTED, 3, 0.9815, (4, 1, 270))
    assert not noise.passed and noise.outcome == "not_better" and "McNemar p 0.188 >= 0.05" in noise.reason
    assert decide(0.9852, GATE, 3, 0.9815).passed  # the delta gate: +0.0037 > 0.001
    assert not decide(0.95, TESTED, 3, 0.95, (0, 0, 270)).passed  # no disagreement: p 1
    one = decide(0.9852, TESTED, 3, 0.9815, (1, 0, 270))  # one more sample right, none worse: p 0.5
    assert not one.passed and one.p == pytest.approx(0.5)
    assert "1 right where it was wrong, 0 the other way" in one.reason


def test_a_tested_gate_without_the_holders_outcomes_compares_accuracies_and_says_so():
    gate = decide(0.9852, TESTED, 3, 0.9815, None)
    assert gate.passed and gate.test == "delta" and gate.b is None
    assert gate.reason.endswith("; by min_delta: the holder logged no test outcomes)")
    assert decide(0.95, TESTED, None, None, None).passed  # the first version: nothing to test against


def test_on_other_test_samples_the_gate_bootstraps_the_two_test_sets():
    from scipy import stats

    from trainlib import inference

    # 540/540 against 500/540: far beyond either set's noise; 266/270 against 265/270: one sample, noise
    gate = decide(1.0, TESTED, 3, 0.9259, None, (540, 540, 500, 540))
    assert gate.passed and gate.test == "bootstrap" and gate.p < 0.001 and gate.b is None
    assert "on other test samples: 540/540 right against 500/540; bootstrap p" in gate.reason
    tie = decide(0.9852, TESTED, 3, 0.9815, None, (266, 270, 265, 270))
    assert not tie.passed and tie.outcome == "not_better" and tie.p > 0.3
    assert not decide(0.95, TESTED, 3, 0.95, None, (95, 100, 95, 100)).passed  # a tie
    # the bootstrap p is near the normal approximation's one-sided p of the two accuracies' difference
    a, b, n = 0.93, 0.90, 1000
    z = (a - b) / ((a * (1 - a) / n + b * (1 - b) / n) ** 0.5)
    assert inference.bootstrap_better(930, n, 900, n) == pytest.approx(stats.norm.sf(z), abs=0.004)


def test_outcomes_pair_on_the_test_rows_two_runs_share_of_the_same_data():
    import numpy as np

    from tasks.registry.outcomes import Outcomes, disagreements

    new = Outcomes("d1", np.array([3, 5, 7, 9]), np.array([True, True, False, True]))
    old = Outcomes("d1", np.array([9, 7, 5, 11]), np.array([False, True, True, True]))
    assert disagreements(new, old) == (1, 1, 3)  # rows 5, 7, 9: 9 only new right, 7 only old right
    assert disagreements(new, Outcomes("d2", old.rows, old.correct)) is None  # other data: nothing to pair
