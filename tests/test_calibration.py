"""A small version of bench/calibration.py: A/A comparisons (the same config, other training seeds) judged as
`compare` judges them rarely say `better` or `worse`, and a known gain is found."""

from bench.calibration import accuracies, verdicts
from trainlib.evidence import BETTER, WORSE


def test_a_a_comparisons_rarely_call_a_difference_and_a_known_gain_is_found():
    pool = accuracies(comparisons=12, repeats=3, arms=3)  # a baseline and two A/A treatments, 3 repeats each
    false = sum(any(v in (BETTER, WORSE) for v in vs) for vs in verdicts(pool, 3))
    # at the nominal 5% per family, 4 or more false families of 12 has probability 0.002
    assert false <= 3, false
    gained = sum(vs[0] == BETTER for vs in verdicts(pool, 3, effect=0.08))  # 8 points: far beyond the seeds' noise
    assert gained >= 9, gained
