"""The training engine: `fit` (gradient-descent modes, penalties, schedules, early stopping, weight averaging,
checkpoints, callbacks) around the inner loop of trainlib.loop, and `predict_logits`. Metrics are reported once
per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from trainlib.averaging import EMA, SWA, Averaged, check
from trainlib.checkpoint import load_checkpoint, save_checkpoint
from trainlib.data.batches import Data, batch_bounds, rows_per_pass
from trainlib.device import resolve_precision
from trainlib.distributed import SINGLE, Shard
from trainlib.earlystop import EarlyStopping
from trainlib.errors import ConfigError
from trainlib.loop import Loop, autocast
from trainlib.models import Dropout
from trainlib.optim import penalized_weights
from trainlib.registry import Registry
from trainlib.schedules import LRSchedule
from trainlib.streams import Streams


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


def check_batch(mode: str, batch_size: int, samples: int) -> None:
    """ConfigError when a minibatch would be larger than the train split (`samples`)."""
    if mode == "minibatch" and batch_size > samples:
        raise ConfigError(f"training.batch_size ({batch_size}) is larger than the train split ({samples} "
                          "samples) in minibatch mode; lower it or use training.mode: batch")


def fit(model: nn.Module, train: Data, val: Data | None = None, *, optimizer: torch.optim.Optimizer,
        epochs: int, schedule: LRSchedule | None = None, batch_size: int = 64, mode: str = "minibatch",
        accumulate: int = 1,
        l1: float = 0.0, l2: float = 0.0, augment: Callable | None = None, mix: Callable | None = None,
        ema_decay: float = 0.0, ema_warmup: bool = True, swa_start: int = 0,
        early_stopping: EarlyStopping | None = None, label_smoothing: float = 0.0, grad_clip: float | None = None,
        device: torch.device | str = "cpu", precision: str = "auto", compile: bool = False, seed: int = 0,
        callbacks: Sequence[Callback] = (), logger: Logger | None = None, checkpoint: str | Path | None = None,
        resume: bool = False, meta: dict | None = None, shard: Shard = SINGLE) -> FitResult:
    """Train `model` on `train` for up to `epochs`, validating on `val` after every epoch.

    What is trained, and on what:
      model: any module taking a batch of inputs to logits; train, val: in-memory or streamed data.
      epochs: passes over `train` at most (early stopping or a callback may end sooner).
    How each update is made:
      optimizer: built over `model`'s parameters; schedule: its LR per update and per epoch
        (default: constant); mode: batch (one update per epoch, every sample, accumulated over chunks of
        `batch_size`), minibatch (updates of `batch_size` samples, or of `accumulate` batches of them) or
        stochastic (updates of 1 sample).
      l1, l2: penalty weights on the weight tensors (not biases or norms), added to the data loss.
      augment: callable (x, generator) -> x, applied to every training batch on the device.
      mix: callable (x, y, cpu generator) -> (x, soft targets), after `augment` (trainlib.data.mix: mixup, cutmix);
        train accuracy then counts the soft targets' argmax.
    Weight averaging (trainlib.averaging), one at a time:
      ema_decay: above 0, an exponential moving average of the weights after every update (with `ema_warmup`,
        timm's ramp); validation, early stopping and the returned model use it, and `raw_val_*` metrics
        record the trained weights. swa_start: from this epoch on (1-based; 0 off) the weights at each
        epoch's end are averaged equally (the schedule gives SWA's LR); at the end the average's batch-norm
        statistics are recomputed on the train data, the model gets its weights, and `averaged` its val metrics.
      label_smoothing: as torch's cross_entropy; grad_clip: largest gradient norm (None: no clipping).
      device: where to train; precision: auto | fp32 | bf16 | fp16 (trainlib.device.resolve_precision);
        compile: train through torch.compile (the first batches pay the compilation).
      seed: data order, augmentation and dropout draw from generators seeded from it, never the global RNG.
    When to stop, and what to report:
      early_stopping: the monitored metric, patience, and whether to restore the best weights at the end
        (default: off, best epoch still tracked on val_loss).
      callbacks: `on_epoch_end(epoch, metrics)` after every epoch; may raise StopTraining.
      logger: `log_metrics(metrics, step=epoch)` once per epoch.
    Surviving a killed process:
      checkpoint: file rewritten after every epoch (model, optimizer, schedule, early stopping, RNG
        states, history and `meta`); with `resume`, training continues from it when it exists and ends
        with the same weights as an uninterrupted run (CPU, same seed). meta: stored with it (the config).
    shard: this process's rank in a data-parallel training (trainlib.distributed), which trains on its
      part of every batch; the default is one process.
    """
    device = torch.device(device)
    chunk, accumulate = _steps(mode, len(train), batch_size, accumulate)
    check_batch(mode, batch_size, len(train))
    if shard.parallel and (chunk < shard.world or len(train) < shard.world):
        raise ConfigError(f"training.devices: {shard.world} processes share every batch, but batches hold "
                          f"{min(chunk, len(train))} sample(s); raise training.batch_size or lower training.devices")
    upe = math.ceil(len(batch_bounds(len(train), chunk, shard.world)) / accumulate)
    loop = Loop(model, optimizer, device, resolve_precision(precision, device), label_smoothing, grad_clip,
                penalized_weights(model) if (l1 or l2) else [], l1, l2, augment, shard, compile=compile)
    train, val = train.to(device), val.to(device) if val is not None else None
    es = early_stopping or EarlyStopping(enabled=False, restore_best=False)
    loop.mix = mix
    loop.average = avg = _averaging(loop.model, ema_decay, ema_warmup, swa_start, es)
    schedule = schedule or LRSchedule(optimizer, epochs=epochs, updates_per_epoch=upe)
    logger = logger or NullLogger()
    rngs = Streams.seeded(seed, device, shard)
    _own_dropout(model, rngs.dropout)
    history, lrs, start, reason = [], [], 1, "completed"
    if resume and checkpoint and Path(checkpoint).exists():
        history, lrs, reason, start = _resume(checkpoint, loop, schedule, es, rngs, epochs, avg)
    for epoch in range(start, epochs + 1):
        metrics = _epoch(loop, train, val, chunk, accumulate, schedule, lrs, rngs, epoch, upe)
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
            rng = shard.gather(rngs.state())  # one state per rank
            if shard.rank == 0:
                save_checkpoint(checkpoint, epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                schedule=schedule.state_dict(), early_stopping=es.state_dict(),
                                rng=rng if shard.parallel else rng[0], history=history, lrs=lrs,
                                stop_reason=reason, meta=meta or {}, averaged=avg.state_dict() if avg else None,
                                scaler=loop.scaler.state_dict() if loop.scaler else None)
        if reason != "completed":
            break
    restored = es.restore(model)
    final = _averaged_weights(loop, avg, restored, train, val, chunk)
    return FitResult(history, es.best_epoch, es.best, es.monitor, history[-1]["epoch"] if history else 0, reason,
                     restored, lrs, upe, final)


def _averaging(model: nn.Module, ema_decay: float, ema_warmup: bool, swa_start: int,
               es: EarlyStopping) -> Averaged | None:
    check(ema_decay, swa_start, es.enabled)
    return EMA(model, ema_decay, ema_warmup) if ema_decay else SWA(model, swa_start) if swa_start else None


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


def _resume(checkpoint, loop: Loop, schedule, es, rngs, epochs: int,
            avg: Averaged | None) -> tuple[list, list, str, int]:
    """Put a checkpoint's state into the training -> (history, LRs, stop reason, first epoch to run)."""
    ck, model, optimizer, shard = load_checkpoint(checkpoint), loop.model, loop.optimizer, loop.shard
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
    rngs.load(_rank_rng(ck["rng"], shard, checkpoint))
    start = ck["epoch"] + 1 if ck["stop_reason"] == "completed" else epochs + 1  # a stopped run stays stopped
    return ck["history"], ck["lrs"], ck["stop_reason"], start


def _epoch(loop: Loop, train: Data, val: Data | None, chunk: int, accumulate: int, schedule: LRSchedule,
           lrs: list[float], rngs: Streams, epoch: int, upe: int) -> dict[str, float]:
    """Train one epoch and validate -> its metrics, the same on every rank (rank 0 validates, and its numbers
    decide early stopping and the schedule everywhere)."""
    started, shard = time.perf_counter(), loop.shard
    try:
        metrics = loop.train_epoch(train.batches(chunk, rngs.shuffle, shard), len(train), chunk, accumulate,
                                   schedule, lrs, rngs.augment, epoch, rngs.mix)
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


def _own_dropout(model: nn.Module, generator: torch.Generator) -> torch.Generator:
    """Give trainlib's dropout layers this run's generator (torch's global RNG is shared by threads)."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generator = generator
    return generator


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
    model.to(device).eval()
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
