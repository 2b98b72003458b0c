"""Calibration as a technique (`calibrate.method`): after training, make the network's confidence match how often
it is right, without changing what it predicts.

`temperature` (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T > 0 divides the logits;
T is fitted on the validation split by minimizing its negative log-likelihood. Dividing every logit by the same T
keeps their order, so predictions, accuracy and the confusion matrix are unchanged; only the probabilities move
(T > 1 softens an over-confident network). The model carries T (trainlib.models.Classifier.temperature), so the
registered model, scoring and serving all return the calibrated probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainlib.metrics import calibration_error
from trainlib.registry import Registry

LOWEST, HIGHEST = 0.05, 20.0  # T is searched in this range (log scale): beyond it the fit is degenerate


@dataclass(frozen=True)
class Calibration:
    """What calibration did: the temperature fitted and the validation split's ECE and loss before and after."""

    method: str
    temperature: float
    val_ece_before: float
    val_ece: float
    val_loss_before: float
    val_loss: float

    def metrics(self) -> dict[str, float]:
        """As logged on the run."""
        return {"temperature": self.temperature, "val_ece_uncalibrated": self.val_ece_before,
                "val_ece_calibrated": self.val_ece, "val_loss_uncalibrated": self.val_loss_before,
                "val_loss_calibrated": self.val_loss}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimizing the mean NLL of softmax(logits / T) over (logits, labels): unimodal in log T (convex in 1/T),
    solved by golden-section search on log T to 1e-4 relative. Where every sample is predicted right the NLL falls
    without end as T -> 0 (sharper is always better on those samples): nothing to fit, T stays 1."""
    logits, labels = logits.double(), labels.long()
    if bool((logits.argmax(1) == labels).all()):
        return 1.0

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    a, b = math.log(LOWEST), math.log(HIGHEST)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


# method -> fit(validation logits, labels) -> the temperature the model then carries; None: left as trained
METHODS: Registry[Callable[[torch.Tensor, torch.Tensor], float] | None] = Registry("calibration method", {
    "none": None, "temperature": fit_temperature})


def calibrate(method: str, logits: torch.Tensor, labels: torch.Tensor) -> Calibration | None:
    """Fit `method` on the validation split's (logits, labels) of the uncalibrated model (None for `none`)."""
    fit = METHODS[method]
    if fit is None:
        return None
    t = fit(logits, labels)

    def scored(temperature: float) -> tuple[float, float]:
        probs = torch.softmax(logits.double() / temperature, 1)
        return (calibration_error(probs.numpy(), labels.numpy()),
                float(F.cross_entropy(logits.double() / temperature, labels.long())))

    (ece_before, loss_before), (ece, loss) = scored(1.0), scored(t)
    return Calibration(method, t, ece_before, ece, loss_before, loss)


def uncalibrated_ece(probabilities: np.ndarray, labels: np.ndarray, temperature: float,
                     prefix: str = "test_") -> dict[str, float]:
    """`{prefix}ece_uncalibrated`: the ECE of a calibrated model's `probabilities` before its temperature (nothing
    for an uncalibrated model, temperature 1)."""
    if temperature == 1.0:
        return {}
    return {f"{prefix}ece_uncalibrated": calibration_error(uncalibrated(probabilities, temperature), labels)}


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities the model gave before its temperature: softmax(T log p) = softmax(z)."""
    logp = np.log(np.clip(probabilities, 1e-30, None)) * temperature
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)
