"""Intervals and verdicts of trainlib/evidence.py against cases computed by hand."""

import math

import pytest

from trainlib.errors import ConfigError
from trainlib.evidence import BETTER, EQUIVALENT, NO_DIFFERENCE, TOO_FEW, WORSE, estimate, paired
from trainlib.monitor import HIGHER, LOWER, better


def test_the_interval_of_a_mean_is_students_t():
    e = estimate([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sample std sqrt(2.5), t(0.975, 4) = 2.776445
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert e.n == 5 and e.mean == 3.0 and e.std == pytest.approx(math.sqrt(2.5))
    assert e.ci_low == pytest.approx(3 - half, abs=1e-6) and e.ci_high == pytest.approx(3 + half, abs=1e-6)


def test_two_repeats_give_the_wide_interval_they_deserve():
    e = estimate([0.90, 0.92])  # t(0.975, 1) = 12.706: one more repeat than an anecdote
    assert e.ci_high - e.ci_low == pytest.approx(2 * 12.7062 * e.std / math.sqrt(2), rel=1e-4)


def test_a_constant_difference_is_better_or_worse_by_the_metric():
    base = [0.90, 0.80, 0.85, 0.95]
    up = [b + 0.02 for b in base]
    assert paired("test_accuracy", up, base).verdict == BETTER
    assert paired("test_loss", up, base).verdict == WORSE  # a higher loss is worse
    assert paired("test_loss", base, up).verdict == BETTER
    versus = paired("test_accuracy", up, base)
    assert versus.diff.mean == pytest.approx(0.02) and versus.diff.ci_low == pytest.approx(0.02)


def test_identical_runs_are_equivalent():
    runs = [0.91, 0.87, 0.93]
    versus = paired("test_accuracy", runs, runs)
    assert versus.verdict == EQUIVALENT and versus.diff.mean == 0 and versus.diff.ci_low == 0


def test_a_difference_within_the_seed_noise_is_no_detectable_difference():
    base = [0.90, 0.80, 0.85, 0.95, 0.88]
    noisy = [0.91, 0.78, 0.87, 0.93, 0.89]  # differences +0.01 -0.02 +0.02 -0.02 +0.01: mean 0
    assert paired("best_val_accuracy", noisy, base).verdict == NO_DIFFERENCE


def test_pairing_sees_a_small_steady_gain_that_unpaired_noise_would_hide():
    base = [0.70, 0.95, 0.80, 0.60, 0.90]  # seeds matter a lot
    treated = [b + 0.01 for b in base[:4]] + [0.915]  # every seed gains 0.01-0.015
    assert paired("test_accuracy", treated, base).verdict == BETTER
    a, b = estimate(treated), estimate(base)  # as independent samples the intervals overlap widely
    assert a.ci_low < b.ci_high and b.ci_low < a.ci_high


def test_one_repeat_is_too_few_for_a_verdict():
    versus = paired("test_accuracy", [0.99], [0.50])
    assert versus.verdict == TOO_FEW and versus.diff.ci_low is None and estimate([0.5]).std is None


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="as many of each"):
        paired("test_accuracy", [0.9, 0.8], [0.9])
    with pytest.raises(ValueError, match="needs numbers"):
        estimate([])
    with pytest.raises(ValueError, match="needs numbers"):
        estimate([0.9, float("nan")])


def test_which_way_is_better():
    assert {better(m) for m in ("test_accuracy", "best_val_accuracy", "test_f1", "test_recall")} == {HIGHER}
    assert {better(m) for m in ("test_loss", "best_val_loss", "epochs", "train_seconds")} == {LOWER}
    with pytest.raises(ConfigError, match="kind of metric 'norm'"):  # a name it does not know is not guessed
        better("weight_norm")


def test_summaries_and_verdicts_pair_only_the_repeats_both_variants_finished():
    from trainlib.evidence import summarize, versus

    groups = {"sgd": [{"accuracy": 0.80}, {"accuracy": 0.70}, {"accuracy": 0.90}, {"accuracy": 0.60}],
              "adam": [{"accuracy": 0.85}, None, {"accuracy": 0.95}, {"accuracy": 0.65}]}  # repeat 1 failed
    rows = summarize(groups, ["accuracy"])
    assert [(r.label, r.n, r.failed) for r in rows] == [("sgd", 4, 0), ("adam", 3, 1)]
    assert rows[1].estimates["accuracy"].mean == pytest.approx(0.8166667)
    assert rows[1].json()["accuracy"]["mean"] == pytest.approx(0.8166667)  # as --json prints it
    (row,) = versus(groups, "sgd", ["accuracy"])
    # repeats 0, 2, 3: +0.05 each time (sgd's 0.70 of repeat 1 has no partner and is left out)
    assert row.n == 3 and row.diff == pytest.approx(0.05) and row.verdict == BETTER
    assert versus({"a": [{"accuracy": 0.8}, {"accuracy": 0.7}], "b": [{"accuracy": 0.8}, {"accuracy": 0.7}]}, "a",
                  ["accuracy"])[0].verdict == EQUIVALENT  # identical runs
    lone = versus({"a": [{"accuracy": 0.8}, None], "b": [None, {"accuracy": 0.7}]}, "a", ["accuracy"])[0]
    assert lone.n == 0 and lone.diff is None and lone.verdict == TOO_FEW
