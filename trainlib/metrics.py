"""Evaluation: loss, accuracy, macro precision/recall/F1, expected calibration error, per-class report, confusion
matrix, probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainlib.data.batches import Data
from trainlib.engine import predict_logits


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    precision: float  # macro averages over classes
    recall: float
    f1: float
    report: dict  # per-class precision/recall/f1-score/support, shaped as sklearn's classification_report
    confusion: np.ndarray  # (K, K): rows true class, columns predicted
    probabilities: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,)

    def summary(self, prefix: str = "test_") -> dict[str, float]:
        """The scalar metrics, named e.g. test_accuracy; `ece` the expected calibration error."""
        names = ("loss", "accuracy", "precision", "recall", "f1")
        return {prefix + k: float(getattr(self, k)) for k in names} | {
            f"{prefix}ece": calibration_error(self.probabilities, self.labels)}


BINS = 15  # of the calibration error: Guo et al. 2017's


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error (Guo et al. 2017): the samples put in `bins` equal-width bins of their confidence
    (the top class's probability), the mean over samples of |accuracy - mean confidence| of their bin. 0: as often
    right as confident; a network that says 0.99 and is right 90% of the time has about 0.09."""
    if not len(labels):
        return 0.0
    return ece(probabilities.argmax(1) == labels, probabilities.max(1), bins)


def ece(right: np.ndarray, confidence: np.ndarray, bins: int = BINS) -> float:
    """calibration_error from each sample's outcome (right or not) and confidence (its top class's probability)."""
    right = np.asarray(right, dtype=float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # [k/bins, (k+1)/bins); 1.0 in the last
    gap = np.abs(np.bincount(which, right, bins) - np.bincount(which, confidence, bins))  # per bin, summed
    return float(gap.sum() / len(right))


def per_class(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """(confusion (K, K), precision, recall, f1, support) per class; a ratio with nothing to divide is 0
    (sklearn's zero_division=0). numpy only: importing sklearn.metrics costs most of a second."""
    return of_confusion(np.bincount(y * k + pred, minlength=k * k).reshape(k, k))


def of_confusion(confusion: np.ndarray) -> tuple[np.ndarray, ...]:
    """per_class's figures from a (K, K) confusion matrix (rows true class, columns predicted)."""
    k = len(confusion)
    tp, support, predicted = np.diag(confusion).astype(float), confusion.sum(1), confusion.sum(0)

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros(k), where=den > 0)

    return confusion, ratio(tp, predicted), ratio(tp, support), ratio(2 * tp, support + predicted), support


def from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Evaluation:
    """All metrics from logits (N, K) and true labels (N,)."""
    loss = float(F.cross_entropy(logits, labels))
    probs = torch.softmax(logits, 1).numpy()
    y, pred = labels.numpy().astype(np.int64), logits.argmax(1).numpy().astype(np.int64)
    confusion, p, r, f1, support = per_class(y, pred, len(classes))
    accuracy = float((pred == y).mean())
    row = lambda a, b, c, n: {"precision": float(a), "recall": float(b), "f1-score": float(c), "support": int(n)}  # noqa: E731
    report = {name: row(p[i], r[i], f1[i], support[i]) for i, name in enumerate(classes)}
    w = support / max(support.sum(), 1)
    report |= {"accuracy": accuracy, "macro avg": row(p.mean(), r.mean(), f1.mean(), support.sum()),
               "weighted avg": row(p @ w, r @ w, f1 @ w, support.sum())}
    return Evaluation(loss, accuracy, float(p.mean()), float(r.mean()), float(f1.mean()), report, confusion, probs, y)


def evaluate(model: torch.nn.Module, data: Data, classes: list[str], device="cpu", precision="auto") -> Evaluation:
    """Evaluate `model` (eval mode, no gradients) on every sample of `data`."""
    logits, labels = predict_logits(model, data, device, precision)
    return from_logits(logits, labels, classes)
