"""Early stopping: watch a validation metric, stop after `patience` epochs without improvement,
and keep the best weights to restore at the end."""

from __future__ import annotations

import copy

import torch

from trainlib.monitor import MONITORS, improved


class EarlyStopping:
    """Tracks the best epoch of `monitor` always; stops training and restores the best weights only
    when `enabled`."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True, enabled: bool = True):
        self.mode = MONITORS[monitor]
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.restore_best, self.enabled = restore_best, enabled
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Record an epoch's metrics; returns True when training should stop now."""
        value = metrics.get(self.monitor)
        if value is None:
            return False
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.enabled and self.restore_best:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.enabled and self.bad_epochs >= self.patience

    def restore(self, model: torch.nn.Module) -> bool:
        """Load the best weights into `model` (when asked to and known); returns whether it did."""
        if not (self.enabled and self.restore_best and self.best_state):
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": copy.copy(self.best_state)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_state = state["best_state"]
