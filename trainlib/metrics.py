"""Evaluation: loss, accuracy, macro precision/recall/F1, per-class report, confusion matrix, probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

from trainlib.data.batches import Data
from trainlib.engine import predict_logits


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    precision: float  # macro averages over classes
    recall: float
    f1: float
    report: dict  # per-class precision/recall/f1/support, as sklearn's classification_report
    confusion: np.ndarray  # (K, K): rows true class, columns predicted
    probabilities: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,)

    def summary(self, prefix: str = "test_") -> dict[str, float]:
        """The scalar metrics, named e.g. test_accuracy."""
        names = ("loss", "accuracy", "precision", "recall", "f1")
        return {prefix + k: float(getattr(self, k)) for k in names}


def from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Evaluation:
    """All metrics from logits (N, K) and true labels (N,)."""
    loss = float(F.cross_entropy(logits, labels))
    probs = torch.softmax(logits, 1).numpy()
    y, pred, ks = labels.numpy(), logits.argmax(1).numpy(), list(range(len(classes)))
    p, r, f1, _ = precision_recall_fscore_support(y, pred, labels=ks, average="macro", zero_division=0)
    report = classification_report(y, pred, labels=ks, target_names=classes, output_dict=True, zero_division=0)
    return Evaluation(loss, float((pred == y).mean()), float(p), float(r), float(f1), report,
                      confusion_matrix(y, pred, labels=ks), probs, y)


def evaluate(model: torch.nn.Module, data: Data, classes: list[str], device="cpu", precision="auto") -> Evaluation:
    """Evaluate `model` (eval mode, no gradients) on every sample of `data`."""
    logits, labels = predict_logits(model, data, device, precision)
    return from_logits(logits, labels, classes)
