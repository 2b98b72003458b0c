"""Boosting's arithmetic: one round of multi-class AdaBoost (SAMME) gives a member its weight in the vote and
the next round its sample weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Boost:
    alpha: float  # the member's weight in the vote
    error: float  # its weighted error on the train split
    weights: np.ndarray  # the next round's sample weights (sum 1)
    stop: str | None  # why boosting ends after this member, if it does


def samme(weights: np.ndarray, correct: np.ndarray, n_classes: int, learning_rate: float = 1.0) -> Boost:
    """One round of multi-class AdaBoost (SAMME): the member's weight from its weighted error, and sample
    weights raised on the samples it got wrong. A member no better than chance gets weight 0 and ends
    boosting; a perfect one ends it too, weighted as if it had made half a mistake."""
    w = weights / weights.sum()
    error = float(w[~correct].sum())
    if error >= 1 - 1 / n_classes:
        return Boost(0.0, error, w, f"weighted error {error:.4f} is no better than chance ({1 - 1 / n_classes:.4f})")
    clipped = max(error, 0.5 / len(w))
    alpha = learning_rate * (np.log((1 - clipped) / clipped) + np.log(n_classes - 1))
    raised = w * np.exp(alpha * ~correct)
    return Boost(float(alpha), error, raised / raised.sum(), "a perfect fit of the train split" if error == 0 else None)
