"""The learning-rate range test (Smith 2017; fastai's lr_find, Lightning's LearningRateFinder): train a fresh
model for a few hundred updates while the LR grows exponentially from `start` to `end`, record the loss of every
update, smooth it, stop when it diverges, and suggest the LR where the smoothed loss falls fastest.

Smoothing: an exponential moving average with bias correction, as fastai and Lightning smooth, but with a
weight of 0.9 on the past instead of their 0.98, whose lag (about 50 updates) moved the curve by several decades
of LR in a sweep of 100-200 updates (measured on digits: the raw loss fell at 1e-3..1e-2, the 0.98 curve at
1e-2..1); and for the suggestion the average runs forwards and then backwards, which cancels its lag.

The suggestion rule is the steepest descent (Lightning's `suggestion()`): the LR at the most negative slope of the
smoothed loss against log LR, skipping the first updates (where smoothing has little history) and the last one.
fastai's newer default, `valley`, is not used: on few hundred noisy updates the steepest point is the rule whose
behaviour is easiest to state and to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from trainlib.data.batches import Data
from trainlib.errors import TrainingError
from trainlib.loop import CPU, Loop, Runtime, Step

START, END, UPDATES = 1e-7, 10.0, 200  # the sweep's defaults: fastai's range, twice its 100 updates
SMOOTHING = 0.9  # weight of the past in the loss's exponential moving average (fastai's beta is 0.98)
DIVERGE = 4.0  # stop once the smoothed loss is this many times its lowest (fastai, Lightning)
SKIP_START, SKIP_END = 10, 1  # updates left out of the suggestion at either end (Lightning's defaults)
RULE = "steepest"


@dataclass
class Sweep:
    lrs: list[float]  # the LR of every update made
    losses: list[float]  # its smoothed training loss (smooth_both_ways)
    raw: list[float] = field(default_factory=list)  # the loss as measured
    suggestion: float | None = None  # None when the sweep stopped too early to say
    stopped: str = "completed"  # or "diverged"
    rule: str = RULE


def lr_at(i: int, updates: int, start: float = START, end: float = END) -> float:
    """The LR of update i (0-based) of an exponential sweep from `start` to `end` over `updates`."""
    return start * (end / start) ** (i / max(updates - 1, 1))


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction, as fastai and Lightning smooth the sweep (it lags)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def smooth_both_ways(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """`smooth` forwards, then backwards over the result: the same smoothing without its lag."""
    return smooth(smooth(losses, beta)[::-1], beta)[::-1]


def steepest(lrs: list[float], losses: list[float], skip_start: int = SKIP_START,
             skip_end: int = SKIP_END) -> float | None:
    """The LR where the smoothed loss falls fastest against log LR, or None with too few updates to judge."""
    if len(losses) < skip_start + skip_end + 3:
        return None
    window = slice(skip_start, len(losses) - skip_end)
    slope = np.gradient(np.asarray(losses[window]), np.log(np.asarray(lrs[window])))
    return float(lrs[window][int(np.argmin(slope))])


def sweep(model: nn.Module, train: Data, step: Step, runtime: Runtime = CPU, *, start: float = START,
          end: float = END, updates: int = UPDATES) -> Sweep:
    """Run the range test on `model` (changed: use a fresh one) with `step.optimizer` over its parameters:
    `updates` minibatches of `step.batch_size` (passes over `train` repeat as needed), the LR of update i
    `lr_at(i)` for every param group (groups keep their ratios to the first). Each update is a training's
    (trainlib.loop.Loop: augmentation, mixing, penalties, clipping, precision, the run's random streams); the
    loss recorded is its data loss, as the training's train_loss. Stops early when the smoothed loss exceeds
    DIVERGE x its lowest or the loss is not finite."""
    if not 0 < start < end:
        raise TrainingError(f"the LR sweep needs 0 < start < end, not start {start:g}, end {end:g}")
    loop = Loop(model, step, runtime)
    optimizer, data = step.optimizer, train.to(loop.device)
    model.train()
    ratios = [g["lr"] / optimizer.param_groups[0]["lr"] if optimizer.param_groups[0]["lr"] else 1.0
              for g in optimizer.param_groups]
    lrs, raw, best, stopped, avg = [], [], math.inf, "completed", 0.0
    batches = iter(())
    optimizer.zero_grad(set_to_none=True)
    while len(lrs) < updates:
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(data.batches(min(step.batch_size, len(data)), loop.streams.shuffle))
            continue
        lr = lr_at(len(lrs), updates, start, end)
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        loss = loop.backward(x, y)[0]
        loop.update()
        value = loss.item()  # one sync per update: a sweep is short, and it must see every loss to stop
        lrs.append(lr)
        raw.append(value)
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        smoothed = avg / (1 - SMOOTHING ** len(raw))  # as smooth() computes it
        best = min(best, smoothed)
        if not math.isfinite(value) or smoothed > DIVERGE * best:
            stopped = "diverged"
            break
    losses = smooth_both_ways(raw)
    return Sweep(lrs, losses, raw, steepest(lrs, losses), stopped)
