"""Learning-rate schedules in closed form, with optional linear warmup.

Each schedule is a factor on the optimizer's base LR (so param groups with their own LRs keep their
ratios). Per-epoch schedules (step, exponential, cosine, plateau) change the LR at epoch ends;
per-batch ones (cyclical, onecycle) after every update; warmup ramps linearly per update. The
formulas match torch.optim.lr_scheduler's StepLR, ExponentialLR, CosineAnnealingLR, CyclicLR,
OneCycleLR (cosine annealing) and ReduceLROnPlateau (relative threshold 1e-4, no cooldown).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainlib.errors import ConfigError
from trainlib.monitor import MONITORS, improved
from trainlib.registry import Registry

PLATEAU_THRESHOLD = 1e-4  # relative improvement that counts, as torch's ReduceLROnPlateau default


@dataclass(frozen=True)
class Shape:
    """What a schedule may depend on: the run's length and the knobs of the config's `schedule`."""

    lr: float  # the optimizer's configured (base) LR
    epochs: int
    updates_per_epoch: int
    knobs: dict


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(max(pct, 0.0), 1.0)) + 1)


def _none(s: Shape):
    return lambda t, e: 1.0


def _step(s: Shape):
    size, gamma = s.knobs.get("step_size", 10), s.knobs.get("gamma", 0.1)
    return lambda t, e: gamma ** (e // size)


def _exponential(s: Shape):
    decay = s.knobs.get("decay", 0.95)
    return lambda t, e: decay**e


def _cosine(s: Shape):
    floor = s.knobs.get("min_lr", 0.0) / s.lr
    return lambda t, e: floor + (1 - floor) * (1 + math.cos(math.pi * min(e, s.epochs) / s.epochs)) / 2


def _peak(s: Shape) -> float:
    max_lr = s.knobs.get("max_lr") or 10 * s.lr
    if max_lr <= s.lr and s.knobs.get("name") == "cyclical":
        raise ConfigError(f"schedule.max_lr ({max_lr}) must be above optimizer.lr ({s.lr}) for a cyclical schedule")
    return max_lr / s.lr


# cycle mode -> amplitude scale at (cycle number, update, exp_range decay per update), as torch's CyclicLR
CYCLE_MODES: Registry[Callable[[int, int, float], float]] = Registry("cycle mode", {
    "triangular": lambda cycle, t, gamma: 1.0,
    "triangular2": lambda cycle, t, gamma: 1 / 2 ** (cycle - 1),
    "exp_range": lambda cycle, t, gamma: gamma**t,
})


def _cyclical(s: Shape):
    ratio, scale_of = _peak(s), CYCLE_MODES[s.knobs.get("cycle_mode", "triangular")]
    half = max(1, round(s.knobs.get("cycle_epochs", 4.0) * s.updates_per_epoch / 2))  # updates per half cycle
    gamma = s.knobs.get("cycle_gamma", 0.9) ** (1 / s.updates_per_epoch)  # exp_range decay per update

    def factor(t, e):
        cycle = math.floor(1 + t / (2 * half))
        x = abs(t / half - 2 * cycle + 1)
        return 1 + (ratio - 1) * max(0.0, 1 - x) * scale_of(cycle, t, gamma)

    return factor


def _onecycle(s: Shape):
    peak = _peak(s)
    start = peak / s.knobs.get("div_factor", 25.0)
    end = start / s.knobs.get("final_div_factor", 1e4)
    total = s.epochs * s.updates_per_epoch
    rise = s.knobs.get("pct_start", 0.3) * total - 1

    def factor(t, e):
        if t <= rise:
            return _anneal(start, peak, t / rise if rise > 0 else 1.0)
        return _anneal(peak, end, (t - rise) / max(total - 1 - rise, 1e-12))

    return factor


def _plateau(s: Shape):
    return None  # stateful: handled by LRSchedule


# name -> (factor builder, stepped per batch?)
SCHEDULES: Registry[tuple[Callable, bool]] = Registry("LR schedule", {
    "none": (_none, False), "step": (_step, False), "exponential": (_exponential, False),
    "cosine": (_cosine, False), "plateau": (_plateau, False),
    "cyclical": (_cyclical, True), "onecycle": (_onecycle, True),
})


class LRSchedule:
    """Sets the optimizer's LRs from the schedule; call `step_batch()` after every update and
    `step_epoch(metrics)` after every epoch. Its state (counters, plateau) goes into checkpoints.

    With `swa_start` (1-based epoch; 0 off), stochastic weight averaging's phase replaces the schedule from that
    epoch on: the LR anneals (cosine, per update) from where the schedule had it to `swa_lr` over `swa_anneal`
    epochs and stays there (torch.optim.swa_utils.SWALR); without `swa_lr` it stays where the schedule had it."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str = "none", *, epochs: int,
                 updates_per_epoch: int, warmup_epochs: float = 0.0, swa_start: int = 0,
                 swa_lr: float | None = None, swa_anneal: float = 0.0, **knobs):
        build, self.per_batch = SCHEDULES[name]
        self.optimizer, self.name = optimizer, name
        self.base = [g["lr"] for g in optimizer.param_groups]
        # ratios like min_lr / lr need a non-zero base; with lr 0 every factor multiplies 0 anyway
        shape = Shape(self.base[0] or 1.0, epochs, max(1, updates_per_epoch), {"name": name, **knobs})
        self._factor = build(shape)
        self.warmup = round(warmup_epochs * shape.updates_per_epoch)
        self.monitor = knobs.get("plateau_monitor", "val_loss")
        self.plateau_factor, self.plateau_patience = knobs.get("plateau_factor", 0.1), knobs.get("plateau_patience", 5)
        self.floor = knobs.get("min_lr", 0.0) / shape.lr
        self.update, self.epoch = 0, 0
        self.scale, self.best, self.bad = 1.0, None, 0  # plateau state
        self.swa_start, self.swa_anneal = swa_start, round(swa_anneal * shape.updates_per_epoch)
        self.swa_factor = swa_lr / shape.lr if swa_lr else None
        self.swa_from: tuple[float, int] | None = None  # (factor, update) where SWA's phase began
        self._enter_swa()
        self.apply()

    def _enter_swa(self) -> None:
        if self.swa_start and self.swa_from is None and self.epoch + 1 >= self.swa_start:
            self.swa_from = (self.factor(), self.update)

    def factor(self) -> float:
        if self.swa_from is not None:
            start, since = self.swa_from
            end = start if self.swa_factor is None else self.swa_factor
            done = (self.update - since) / self.swa_anneal if self.swa_anneal else 1.0
            return _anneal(start, end, done)
        f = self.scale if self._factor is None else self._factor(self.update, self.epoch)
        if self.update < self.warmup:
            f *= (self.update + 1) / self.warmup
        return f

    def lrs(self) -> list[float]:
        f = self.factor()
        return [base * f for base in self.base]

    def apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lrs(), strict=True):
            group["lr"] = lr

    def step_batch(self) -> None:
        self.update += 1
        if self.per_batch or self.update <= self.warmup or self.swa_from is not None:
            self.apply()

    def step_epoch(self, metrics: dict[str, float] | None = None) -> None:
        self.epoch += 1
        if self._factor is None:
            self._plateau_step((metrics or {}).get(self.monitor))
        self._enter_swa()
        self.apply()

    def _plateau_step(self, value: float | None) -> None:
        if value is None:
            raise ConfigError(f"schedule plateau monitors {self.monitor!r}, which this run does not compute "
                              "(it needs a validation split: split.val > 0)")
        if improved(value, self.best, MONITORS[self.monitor], PLATEAU_THRESHOLD, relative=True):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.bad > self.plateau_patience:
            self.scale, self.bad = max(self.scale * self.plateau_factor, self.floor), 0

    def state_dict(self) -> dict:
        return {"update": self.update, "epoch": self.epoch, "scale": self.scale, "best": self.best, "bad": self.bad,
                "swa_from": self.swa_from}

    def load_state_dict(self, state: dict) -> None:
        self.update, self.epoch, self.scale = state["update"], state["epoch"], state["scale"]
        self.best, self.bad, self.swa_from = state["best"], state["bad"], state.get("swa_from")
        self.apply()
