"""The sequential design of `compare --repeats auto[:MAX]` (trainlib/sequential.py): its looks, the level each
spends, and which variants a look stops."""

import pytest

from trainlib import sequential
from trainlib.errors import ConfigError
from trainlib.evidence import BETTER, EQUIVALENT, NO_DIFFERENCE, WORSE
from trainlib.inference import ALPHA


@pytest.mark.parametrize("most", [3, 4, 5, 8, 10, 12, 20, 30])
def test_the_looks_end_at_max_and_spend_exactly_alpha(most):
    looks = sequential.looks(most)
    ns = [look.n for look in looks]
    assert ns[0] == 3 and ns[-1] == most and ns == sorted(set(ns))
    assert sum(look.level for look in looks) == pytest.approx(ALPHA)  # Bonferroni over the looks: at most ALPHA
    assert all(look.level > 0 for look in looks)
    # alpha x t^2 spent by each look: a decision at 3 of 12 repeats needs p < 0.05 x (3/12)^2
    assert looks[0].level == pytest.approx(ALPHA * (3 / most) ** 2)


def test_rounds_grow_by_half_and_a_short_last_round_joins_the_one_before():
    assert [look.n for look in sequential.looks(12)] == [3, 5, 8, 12]
    assert [look.n for look in sequential.looks(20)] == [3, 5, 8, 12, 20]  # not 18 then 20


@pytest.mark.parametrize(("text", "expected"), [("5", (5, False)), ("auto", (sequential.MOST, True)),
                                                ("auto:12", (12, True))])
def test_repeats_are_a_count_or_auto_with_a_max(text, expected):
    assert sequential.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "auto:2", "auto:", "auto:x", "3.5", "sometimes"])
def test_a_bad_repeats_is_refused_with_what_it_takes(text):
    with pytest.raises(ConfigError, match=rf"--repeats {text}: give a whole number of at least 1, `auto`"):
        sequential.parse(text)


def _repeats(values):
    return [{"test_accuracy": v} for v in values]


def test_a_look_stops_the_decided_variants_and_keeps_the_others_open():
    base = [0.80, 0.82, 0.81, 0.83, 0.79]
    groups = {"base": _repeats(base),
              "much better": _repeats([b + 0.20 + 0.001 * i for i, b in enumerate(base)]),
              "twin": _repeats(base),  # the same numbers: equivalent at once
              "noisy": _repeats([b + d for b, d in zip(base, [0.03, -0.02, 0.01, -0.03, 0.02], strict=True)])}
    look = sequential.Look(3, 0.01)
    stops = sequential.judge(groups, "base", ["much better", "twin", "noisy"], look, False, ["test_accuracy"])
    assert {s.label: s.contrasts[0].verdict for s in stops} == {"much better": BETTER, "twin": EQUIVALENT}
    assert all(s.n == 3 and s.decided and s.contrasts[0].n == 3 for s in stops)
    last = sequential.judge(groups, "base", ["noisy"], sequential.Look(5, 0.02), True, ["test_accuracy"])
    assert [(s.label, s.n, s.decided, s.contrasts[0].verdict) for s in last] == [("noisy", 5, False, NO_DIFFERENCE)]


def test_a_look_judges_at_its_own_level_not_at_alpha():
    base = [0.80, 0.82, 0.81]
    groups = {"base": _repeats(base), "worse": _repeats([b - d for b, d in zip(base, [0.05, 0.03, 0.04],
                                                                             strict=True)])}
    # p of this paired t-test is about 0.02: worse at 0.05, undecided at a look that spends 0.005
    assert sequential.judge(groups, "base", ["worse"], sequential.Look(3, 0.05), False,
                            ["test_accuracy"])[0].contrasts[0].verdict == WORSE
    assert sequential.judge(groups, "base", ["worse"], sequential.Look(3, 0.005), False, ["test_accuracy"]) == []
