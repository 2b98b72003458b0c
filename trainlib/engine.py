"""The training engine: `fit` (gradient-descent modes, penalties, schedules, early stopping, weight averaging,
checkpoints, callbacks) around the training step of trainlib.loop, and `predict_logits`. Metrics are reported once
per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from trainlib.averaging import Averaged
from trainlib.cost import Cost

if TYPE_CHECKING:
    from trainlib.calibration import Calibration
from trainlib.checkpoint import load_checkpoint, save_checkpoint
from trainlib.data.batches import Data, batch_bounds, rows_per_pass
from trainlib.device import resolve_precision, to_device
from trainlib.distributed import Shard
from trainlib.earlystop import EarlyStopping
from trainlib.errors import ConfigError
from trainlib.loop import CPU, Loop, Runtime, Step, autocast
from trainlib.registry import Registry
from trainlib.schedules import LRSchedule


class StopTraining(Exception):  # noqa: N818 - a request, not an error
    """Raise from a callback to end training after the current epoch (the result is kept)."""


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after every epoch with its metrics; may raise StopTraining."""


class Logger(Protocol):
    """How tracking reaches the engine: the metrics of every epoch (the default does nothing)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


def _batch(n: int, batch_size: int) -> tuple[int, int]:
    chunk = min(batch_size, n)
    return chunk, math.ceil(n / chunk)  # full-batch GD: accumulate every chunk into one update


# mode -> (n samples, batch_size) -> (samples per forward pass, forward passes per update)
GD_MODES: Registry[Callable[[int, int], tuple[int, int]]] = Registry("gradient-descent mode", {
    "batch": _batch,
    "minibatch": lambda n, batch_size: (batch_size, 1),
    "stochastic": lambda n, batch_size: (1, 1),
})


def updates_per_epoch(mode: str, n: int, batch_size: int, world: int = 1, accumulate: int = 1) -> int:
    """Optimizer updates in one epoch over n samples: 1 (batch), about n / (batch_size x accumulate), or n
    (`world`: processes sharing every batch)."""
    chunk, per_update = _steps(mode, n, batch_size, accumulate)
    return math.ceil(len(batch_bounds(n, chunk, world)) / per_update)


def _steps(mode: str, n: int, batch_size: int, accumulate: int) -> tuple[int, int]:
    """(samples per forward pass, forward passes per update): the mode's, with minibatch gradients accumulated
    over `accumulate` batches (training.accumulate)."""
    check_accumulate(mode, accumulate)
    chunk, per_update = GD_MODES[mode](n, batch_size)
    return chunk, per_update * accumulate


def check_accumulate(mode: str, accumulate: int) -> None:
    """Gradient accumulation is minibatch's: the other modes fix their own samples per update."""
    if accumulate > 1 and mode != "minibatch":
        raise ConfigError(f"training.accumulate: {accumulate} batches per update needs training.mode minibatch "
                          f"(mode {mode} has its own)")


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one dict of metrics per epoch run
    best_epoch: int | None  # epoch with the best monitored value (None without validation data)
    best_value: float | None
    monitor: str
    stopped_epoch: int  # the last epoch run
    stop_reason: str  # "completed", "early_stopping" or "callback"
    restored_best: bool  # whether the model now holds the best epoch's weights
    lrs: list[float] = field(default_factory=list)  # LR of every update (first param group)
    updates_per_epoch: int = 0
    averaged: dict[str, float] = field(default_factory=dict)  # SWA: the final average's val metrics (swa_val_*)
    cost: Cost | None = None  # what the training cost (set by trainlib.recipe.train, which measures it)
    calibration: Calibration | None = None  # trainlib.recipe.train's calibration of the model, if any

    @property
    def train_seconds(self) -> float:
        """The epochs' own seconds, summed (the `train_seconds` metric)."""
        return sum(h["epoch_seconds"] for h in self.history)


def check_batch(mode: str, batch_size: int, samples: int) -> None:
    """ConfigError when a minibatch would be larger than the train split (`samples`)."""
    if mode == "minibatch" and batch_size > samples:
        raise ConfigError(f"training.batch_size ({batch_size}) is larger than the train split ({samples} "
                          "samples) in minibatch mode; lower it or use training.mode: batch")


@dataclass(frozen=True)
class Checkpointing:
    """Surviving a killed process: `path` is rewritten after every epoch (model, optimizer, schedule, early
    stopping, RNG states, history and `meta`); with `resume`, training continues from it when it exists and ends
    with the same weights as an uninterrupted run (CPU, same seed). meta: stored with it (the config)."""

    path: str | Path
    resume: bool = False
    meta: dict = field(default_factory=dict)


def fit(model: nn.Module, train: Data, val: Data | None = None, *, epochs: int, step: Step,
        runtime: Runtime = CPU, averaging: Callable[[nn.Module], Averaged] | None = None,
        early_stopping: EarlyStopping | None = None, callbacks: Sequence[Callback] = (), logger: Logger | None = None,
        checkpoint: Checkpointing | None = None) -> FitResult:
    """Train `model` (any module taking a batch of inputs to logits) on `train` for up to `epochs` passes,
    validating on `val` after every epoch; `train`, `val`: in-memory or streamed data.

    step: how each update is made (trainlib.loop.Step: optimizer, schedule, mode, batch size, penalties,
      clipping, augmentation, mixing); runtime: where (trainlib.loop.Runtime: device, precision, compile, seed,
      data-parallel shard).
    averaging: a hook that makes a running average of the weights over the model (trainlib.averaging.averaging:
      EMA after every update, SWA at epochs' ends), told of every update and epoch; validation and early stopping
      watch it when it says so (EMA, whose trained weights' metrics are then `raw_val_*`), and at the end the model
      gets its weights (SWA: batch norms recomputed on the train data, its val metrics in `averaged`).
    early_stopping: the monitored metric, patience, and whether to restore the best weights at the end
      (default: off, best epoch still tracked on val_loss).
    callbacks: `on_epoch_end(epoch, metrics)` after every epoch; may raise StopTraining.
    logger: `log_metrics(metrics, step=epoch)` once per epoch.
    checkpoint: where each epoch's state is kept, and whether to resume from it (Checkpointing).
    """
    device, shard = torch.device(runtime.device), runtime.shard
    chunk, accumulate = _steps(step.mode, len(train), step.batch_size, step.accumulate)
    check_batch(step.mode, step.batch_size, len(train))
    if shard.parallel and (chunk < shard.world or len(train) < shard.world):
        raise ConfigError(f"training.devices: {shard.world} processes share every batch, but batches hold "
                          f"{min(chunk, len(train))} sample(s); raise training.batch_size or lower training.devices")
    es = early_stopping or EarlyStopping(enabled=False, restore_best=False)
    upe = math.ceil(len(batch_bounds(len(train), chunk, shard.world)) / accumulate)
    loop = Loop(model, step, runtime, averaging)
    if loop.average is not None:
        loop.average.check(es.enabled)
    train, val = train.to(device), val.to(device) if val is not None else None
    avg, optimizer = loop.average, step.optimizer
    schedule = step.schedule or LRSchedule(optimizer, epochs=epochs, updates_per_epoch=upe)
    logger = logger or NullLogger()
    history, lrs, start, reason = [], [], 1, "completed"
    if checkpoint and checkpoint.resume and Path(checkpoint.path).exists():
        history, lrs, reason, start = _resume(checkpoint.path, loop, schedule, es, epochs)
    for epoch in range(start, epochs + 1):
        metrics = _epoch(loop, train, val, chunk, accumulate, schedule, lrs, epoch, upe)
        if avg is not None:
            avg.after_epoch(model, epoch)
        history.append(metrics)
        logger.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        try:
            for callback in callbacks:
                callback.on_epoch_end(epoch, metrics)
        except StopTraining:
            reason = "callback"
        reason = shard.agree(reason)  # every rank stops together
        if es.update(epoch, metrics, _watched(loop) or model) and reason == "completed":
            reason = "early_stopping"
        schedule.step_epoch(metrics)
        if checkpoint:
            rng = shard.gather(loop.streams.state())  # one state per rank
            if shard.rank == 0:
                save_checkpoint(checkpoint.path, epoch=epoch, model=model.state_dict(),
                                optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                                early_stopping=es.state_dict(), rng=rng if shard.parallel else rng[0], history=history,
                                lrs=lrs, stop_reason=reason, meta=checkpoint.meta,
                                averaged=avg.state_dict() if avg else None,
                                scaler=loop.scaler.state_dict() if loop.scaler else None)
        if reason != "completed":
            break
    restored = es.restore(model)
    final = _averaged_weights(loop, avg, restored, train, val, chunk)
    return FitResult(history, es.best_epoch, es.best, es.monitor, history[-1]["epoch"] if history else 0, reason,
                     restored, lrs, upe, final)


def _watched(loop: Loop) -> nn.Module | None:
    """The average validation and early stopping watch during training, if any (EMA's), else None."""
    return loop.average.model if loop.average is not None and loop.average.validated else None


def _averaged_weights(loop: Loop, avg: Averaged | None, restored: bool, train: Data, val: Data | None,
                      chunk: int) -> dict[str, float]:
    """The model ends with the averaged weights (unless early stopping restored its best, which were the watched
    average's) -> the average's own val metrics, when it has a prefix for them (SWA: swa_val_*)."""
    if avg is None or restored or avg.updates == 0:
        return {}
    avg.finish(loop.layout(x) for x, _ in train.batches(chunk))
    loop.model.load_state_dict(avg.model.state_dict())
    if avg.prefix and val is not None and loop.shard.rank == 0:
        return {f"{avg.prefix}{k}": v for k, v in loop.validate(val).items()}
    return {}


def _resume(checkpoint, loop: Loop, schedule, es, epochs: int) -> tuple[list, list, str, int]:
    """Put a checkpoint's state into the training -> (history, LRs, stop reason, first epoch to run)."""
    ck, model, optimizer, shard, avg = load_checkpoint(checkpoint), loop.model, loop.optimizer, loop.shard, loop.average
    model.load_state_dict(ck["model"])
    if loop.scaler and ck.get("scaler"):  # fp16: the loss scale it had reached
        loop.scaler.load_state_dict(ck["scaler"])
    if avg is not None:
        if not ck.get("averaged"):
            raise ConfigError(f"checkpoint {checkpoint}: written without weight averaging (training.ema, "
                              "training.swa); resume it with the settings it was written with")
        avg.load_state_dict(ck["averaged"])
    optimizer.load_state_dict(ck["optimizer"])
    schedule.load_state_dict(ck["schedule"])
    es.load_state_dict(ck["early_stopping"])
    loop.streams.load(_rank_rng(ck["rng"], shard, checkpoint))
    start = ck["epoch"] + 1 if ck["stop_reason"] == "completed" else epochs + 1  # a stopped run stays stopped
    return ck["history"], ck["lrs"], ck["stop_reason"], start


def _epoch(loop: Loop, train: Data, val: Data | None, chunk: int, accumulate: int, schedule: LRSchedule,
           lrs: list[float], epoch: int, upe: int) -> dict[str, float]:
    """Train one epoch and validate -> its metrics, the same on every rank (rank 0 validates, and its numbers
    decide early stopping and the schedule everywhere)."""
    started, shard = time.perf_counter(), loop.shard
    try:
        metrics = loop.train_epoch(train.batches(chunk, loop.streams.shuffle, shard), len(train), chunk, accumulate,
                                   schedule, lrs, epoch)
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        raise ConfigError(f"training.compile: torch.compile could not compile the model ({str(exc)[:300]}); set "
                          "training.compile: false") from None
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise ConfigError(f"the model's batch norm saw a single value per channel ({exc}): the inputs are too "
                          "small for this model in batches of one; use training.mode: minibatch with "
                          "training.batch_size >= 2, or larger images") from None
    seconds = time.perf_counter() - started
    if val is not None and shard.rank == 0:
        metrics.update(loop.validate(val, _watched(loop)))
        if _watched(loop) is not None:  # the trained weights beside their average
            metrics.update({f"raw_{k}": v for k, v in loop.validate(val).items()})
    metrics.update(epoch=epoch, updates=upe, epoch_seconds=time.perf_counter() - started,
                   samples_per_second=len(train) / max(seconds, 1e-9))
    return shard.agree(metrics)


def _rank_rng(saved: dict | list, shard: Shard, checkpoint) -> dict:
    """This rank's RNG states from a checkpoint (one dict, or one per rank of a data-parallel training)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != shard.world:
        raise ConfigError(f"checkpoint {checkpoint}: written by a training on {len(states)} device(s); continue it "
                          f"with training.devices: {len(states)}, not {shard.world}")
    return states[shard.rank]


@torch.no_grad()
def predict_logits(model: nn.Module, data: Data, device: torch.device | str = "cpu",
                   precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) on the CPU for every sample of `data`, in order, with the model in eval mode."""
    device = torch.device(device)
    amp = resolve_precision(precision, device)
    to_device(model, device).eval()  # a registered member's exported program too
    # written into tensors made once: small outputs kept per batch among the passes' large, freed activations
    # fragmented the C heap (RSS grew with the number of batches: 300 MiB over 7,500 streamed 28x28 images)
    logits, labels, at = None, torch.empty(len(data), dtype=torch.int64), 0
    for x, y in data.to(device).batches(rows_per_pass(data.sample_shape)):
        with autocast(device, amp):
            out = model(x)
        if logits is None:
            logits = torch.empty((len(data), out.shape[1]), dtype=torch.float32)
        logits[at:at + len(out)], labels[at:at + len(out)] = out, y
        at += len(out)
    return (torch.empty((0, 0)) if logits is None else logits), labels
