"""Which train rows each ensemble member sees: a stratified bootstrap (bagging), a draw by sample weight
(boosting), or k stratified folds (stacking's out-of-fold predictions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainlib.errors import DataError
from trainlib.registry import Registry

Seed = int | Sequence[int]  # numpy seed: e.g. (ensemble seed, member index)


def bootstrap(labels: np.ndarray, rows: np.ndarray, seed: Seed, fraction: float = 1.0) -> np.ndarray:
    """A stratified bootstrap of `rows` (dataset indices): each class drawn with replacement on its own, so
    every class of the split stays, in its proportion."""
    rng = np.random.default_rng(seed)
    parts = [rng.choice(c, max(1, round(fraction * len(c)))) for c in
             (rows[labels[rows] == k] for k in np.unique(labels[rows]))]
    return np.sort(np.concatenate(parts))


def weighted_resample(rows: np.ndarray, weights: np.ndarray, seed: Seed, fraction: float = 1.0) -> np.ndarray:
    """`rows` drawn with replacement in proportion to `weights` (boosting by resampling)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, max(1, round(fraction * len(rows))), p=weights / weights.sum()))


# kind -> (labels of every row, train rows, their sample weights, seed, fraction) -> the rows a member trains on
RESAMPLERS = Registry("resampling", {
    "bootstrap": lambda labels, rows, weights, seed, fraction: bootstrap(labels, rows, seed, fraction),
    "weighted": lambda labels, rows, weights, seed, fraction: weighted_resample(rows, weights, seed, fraction),
})


@dataclass(frozen=True)
class Resample:
    """How one member draws its training rows from the train split."""

    kind: str  # RESAMPLERS
    seed: tuple[int, ...]  # (ensemble seed, member index): every member its own draw
    fraction: float = 1.0  # rows drawn, as a share of the train split's
    weights: str | None = None  # file of the sample weights over the train split (None: uniform)

    def draw(self, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The dataset rows to train on, drawn from the train split's `rows` (`labels`: every row's)."""
        weights = np.load(self.weights) if self.weights else np.ones(len(rows))
        return RESAMPLERS[self.kind](labels, rows, weights, self.seed, self.fraction)


def folds(labels: np.ndarray, rows: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds of `rows`: (rows to fit, held-out rows) per fold; every row is held out once."""
    counts = np.bincount(labels[rows])
    if counts[counts > 0].min() < k:
        raise DataError(f"ensemble.folds: a class has only {counts[counts > 0].min()} train samples, fewer than "
                        f"the {k} folds; lower ensemble.folds or use meta: val")
    from sklearn.model_selection import StratifiedKFold  # here: importing sklearn costs most of a second

    splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    return [(rows[a], rows[b]) for a, b in splitter.split(rows, labels[rows])]
