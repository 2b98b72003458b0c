"""What a trained run is measured by, beyond its metrics: the registry of derived measures every comparison
computes for each repeat (from the fit's history and the trained weights), so a claim about overfitting,
sparsity, weight size or speed is judged on the measure it is about.

Each measure says which way is better (`better`: "higher", "lower", or None where neither is: a sparser or
smaller network is a property, not a score); trainlib.evidence words its verdicts by it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainlib.engine import FitResult
from trainlib.registry import Registry

NEAR_ZERO = 1e-3  # |w| below this counts as a zero weight (L1 drives weights there, rarely to exactly 0)
TARGET = 0.9  # the validation accuracy the *_to_val_90 measures wait for


@dataclass(frozen=True)
class Trained:
    """What a measure is computed from: how the fit went, the weights, and the trained model's accuracy on the
    train and validation splits in eval mode (dropout off: the accuracy logged per epoch during training
    has dropout and augmentation on, so it is no measure of fit)."""

    fit: FitResult
    model: torch.nn.Module
    train_accuracy: float | None = None
    val_accuracy: float | None = None


@dataclass(frozen=True)
class Measure:
    compute: Callable[[Trained], float | None]  # None: the run never had it (e.g. never reached the target)
    better: str | None  # "higher", "lower" or None
    description: str


def _weights(model: torch.nn.Module) -> torch.Tensor:
    """Every weight matrix and kernel (parameters of 2 or more dimensions: not biases, not norm scales)."""
    return torch.cat([p.detach().float().flatten().cpu() for p in model.parameters() if p.dim() > 1])


def _gap(t: Trained) -> float | None:
    if t.train_accuracy is None or t.val_accuracy is None:
        return None
    return t.train_accuracy - t.val_accuracy


def _to_target(fit: FitResult) -> int | None:
    """The first epoch whose validation accuracy reached TARGET, or None."""
    return next((h["epoch"] for h in fit.history if h.get("val_accuracy", 0) >= TARGET), None)


def _epochs_to(t: Trained) -> float | None:
    return _to_target(t.fit)


def _updates_to(t: Trained) -> float | None:
    epoch = _to_target(t.fit)
    return None if epoch is None else epoch * t.fit.updates_per_epoch


def _seconds_to(t: Trained) -> float | None:
    epoch = _to_target(t.fit)
    return None if epoch is None else sum(h["epoch_seconds"] for h in t.fit.history[:epoch])


MEASURES: Registry[Measure] = Registry("measure", {
    "model_val_accuracy": Measure(lambda t: t.val_accuracy, "higher",
                                  "validation accuracy of the model as it is tested (the restored best epoch's "
                                  "weights, or the last epoch's), in eval mode"),
    "train_val_gap": Measure(_gap, "lower", "accuracy on train minus on validation of the trained model, in eval "
                                            "mode (overfitting)"),
    "weight_norm": Measure(lambda t: float(_weights(t.model).norm()), None,
                           "L2 norm of the weight matrices and kernels (biases and norm scales left out)"),
    "near_zero_weights": Measure(lambda t: float((_weights(t.model).abs() < NEAR_ZERO).float().mean()), None,
                                 f"fraction of the weights with |w| < {NEAR_ZERO:g} (sparsity)"),
    "epochs_to_val_90": Measure(_epochs_to, "lower", f"first epoch with validation accuracy >= {TARGET:g}"),
    "updates_to_val_90": Measure(_updates_to, "lower", f"optimizer updates until validation accuracy >= {TARGET:g}"),
    "seconds_to_val_90": Measure(_seconds_to, "lower", f"training seconds until validation accuracy >= {TARGET:g}"),
})


# Every measure a comparison summarizes per repeat: its metrics, then the derived measures above.
RUN_MEASURES = ("test_accuracy", "test_loss", "test_ece", "best_val_accuracy", "best_val_loss", "epochs",
                "train_seconds", "train_cpu_seconds", "test_accuracy_per_cpu_minute",
                *MEASURES)


def derived(trained: Trained) -> dict[str, float | None]:
    """Every registered measure of one trained run (None where it does not apply)."""
    out = {}
    for name, m in MEASURES.items():
        value = m.compute(trained)
        out[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return out
