"""Repeats added in rounds until every verdict is decided (`compare --repeats auto[:MAX]`): a group-sequential
design whose error rate stays at its nominal level however many times it looks.

A comparison looks at its paired repeats after rounds of 3, 5, 8, 12, ... repeats (each about 1.5 times the
last, up to MAX). At look k it tests at the level the spending function lets it spend there: alpha(t) =
ALPHA x t^2 of the information t = n_k / MAX (Kim and DeMets' power family, rho = 2, between Pocock's and O'Brien
and Fleming's), look k spending alpha(t_k) - alpha(t_(k-1)). A variant whose verdict on the primary measure is
decided (better, worse or equivalent) stops there; the undecided go on to the next round, Holm-corrected among
themselves; at MAX the last verdicts stand. Every false verdict the procedure can give falls at one look, and
each look's family errs with chance at most its level (Holm), so the whole procedure errs with chance at most
the sum of the levels, ALPHA: a Bonferroni bound over the looks, which gives away a little power (the tests at
successive looks are correlated) for a bound that needs no assumption on how the repeats' spread evolves.

Early looks spend little (a decision at 3 of 12 repeats needs p < 0.0031) so that a clear difference stops
early and a close one keeps most of the level for the end (0.028 at the 12th repeat). Pure functions: the
compare flow (flows/compare.py) trains the rounds, bench/calibration.py checks the error rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trainlib import evidence
from trainlib.errors import ConfigError
from trainlib.inference import ALPHA

PRIMARY = "test_accuracy"  # the measure whose verdict stops a variant (the held-out score every report leads with)
FIRST = 3  # repeats before the first look: fewer give a t-test 1 degree of freedom
MOST = 10  # MAX when `auto` names none
RHO = 2  # the spending function's power: alpha x t^RHO
DECIDED = (evidence.BETTER, evidence.WORSE, evidence.EQUIVALENT)


@dataclass(frozen=True)
class Look:
    n: int  # repeats of every still-undecided variant at this look
    level: float  # the level its tests are at (the alpha this look spends)


def parse(text: str) -> tuple[int, bool]:
    """`--repeats N`, `auto` or `auto:MAX` -> (repeats, or MAX; whether sequential)."""
    if text.isdigit() and int(text) >= 1:
        return int(text), False
    head, colon, most = text.partition(":")
    if head == "auto" and (not colon or (most.isdigit() and int(most) >= FIRST)):
        return int(most or MOST), True
    raise ConfigError(f"--repeats {text}: give a whole number of at least 1, `auto` (repeats in rounds until "
                      f"every verdict is decided, at most {MOST}) or `auto:MAX` (MAX at least {FIRST})")


def looks(most: int, first: int = FIRST) -> list[Look]:
    """The looks of a design of at most `most` repeats: `first`, then about 1.5 times the last each round, ending
    at `most` (a last round of under half a round joins the one before); each with the level its spending allows."""
    ns = [min(first, most)]
    while ns[-1] < most:
        step = max(1, int(ns[-1] * 0.5 + 0.5))
        ns.append(most if most - ns[-1] - step < step / 2 else ns[-1] + step)  # no round of a few repeats at the end
    spent = [ALPHA * (n / most) ** RHO for n in ns]
    return [Look(n, s - (spent[i - 1] if i else 0.0)) for i, (n, s) in enumerate(zip(ns, spent, strict=True))]


def decided(contrasts: Sequence[evidence.Contrast], primary: str = PRIMARY) -> bool:
    """Whether a variant's verdict on the primary measure is decided (at least one contrast on it, none open)."""
    mine = [c for c in contrasts if c.metric == primary]
    return bool(mine) and all(c.verdict in DECIDED for c in mine)


@dataclass(frozen=True)
class Stop:
    """Where a variant stopped: after `n` repeats (its contrasts computed on them, at that look's level), and
    whether its verdict on the primary measure was decided there (else MAX was reached)."""

    label: str
    n: int
    decided: bool
    contrasts: list[evidence.Contrast]


def judge(groups: dict[str, evidence.Repeats], baseline: str, open_: Sequence[str], look: Look, last: bool,
          measures: Sequence[str], better: dict[str, str | None] | None = None,
          margins: dict[str, float] | None = None, primary: str = PRIMARY) -> list[Stop]:
    """One look: the `open_` variants' first `look.n` repeats against the baseline's, Holm among themselves, at the
    look's level -> a Stop for each variant decided on `primary` (every open one at the `last` look)."""
    mine = {label: groups[label][:look.n] for label in (baseline, *open_)}
    found = evidence.versus(mine, baseline, measures, better, margins, alpha=look.level)
    out = []
    for label in open_:
        contrasts = [c for c in found if c.label == label]
        if decided(contrasts, primary) or last:
            out.append(Stop(label, look.n, decided(contrasts, primary), contrasts))
    return out
