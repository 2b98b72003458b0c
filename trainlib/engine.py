"""The training engine: `fit` (gradient-descent modes, penalties, schedules, early stopping,
checkpoints, callbacks) and `predict_logits`.

Hot-loop rules: data already on the device, batches by index slicing, no host syncs per batch
(losses and accuracies accumulate as device tensors and are read once per epoch), metrics reported
once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from trainlib.checkpoint import load_checkpoint, save_checkpoint
from trainlib.data.batches import Data, batch_bounds
from trainlib.device import resolve_precision
from trainlib.distributed import SINGLE, Shard
from trainlib.earlystop import EarlyStopping
from trainlib.errors import ConfigError, TrainingError
from trainlib.models import Dropout
from trainlib.optim import penalized_weights, penalty
from trainlib.registry import Registry
from trainlib.schedules import LRSchedule

EVAL_BATCH = 2048  # samples per forward pass when evaluating (no gradients held)


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


def updates_per_epoch(mode: str, n: int, batch_size: int, world: int = 1) -> int:
    """Optimizer updates in one epoch over n samples: 1 (batch), about n / batch_size, or n (`world`:
    processes sharing every batch)."""
    chunk, accumulate = GD_MODES[mode](n, batch_size)
    return math.ceil(len(batch_bounds(n, chunk, world)) / accumulate)


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


def fit(model: nn.Module, train: Data, val: Data | None = None, *, optimizer: torch.optim.Optimizer,
        epochs: int, schedule: LRSchedule | None = None, batch_size: int = 64, mode: str = "minibatch",
        l1: float = 0.0, l2: float = 0.0, augment: Callable | None = None,
        early_stopping: EarlyStopping | None = None, label_smoothing: float = 0.0, grad_clip: float | None = None,
        device: torch.device | str = "cpu", precision: str = "auto", seed: int = 0,
        callbacks: Sequence[Callback] = (), logger: Logger | None = None, checkpoint: str | Path | None = None,
        resume: bool = False, meta: dict | None = None, shard: Shard = SINGLE) -> FitResult:
    """Train `model` on `train` for up to `epochs`, validating on `val` after every epoch.

    What is trained, and on what:
      model: any module taking a batch of inputs to logits; train, val: in-memory or streamed data.
      epochs: passes over `train` at most (early stopping or a callback may end sooner).
    How each update is made:
      optimizer: built over `model`'s parameters; schedule: its LR per update and per epoch
        (default: constant); mode: batch (one update per epoch, every sample, accumulated over chunks of
        `batch_size`), minibatch (updates of `batch_size` samples) or stochastic (updates of 1 sample).
      l1, l2: penalty weights on the weight tensors (not biases or norms), added to the data loss.
      augment: callable (x, generator) -> x, applied to every training batch on the device.
      label_smoothing: as torch's cross_entropy; grad_clip: largest gradient norm (None: no clipping).
      device: where to train; precision: auto | fp32 | bf16 (trainlib.device.resolve_precision).
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
    chunk, accumulate = GD_MODES[mode](len(train), batch_size)
    if mode == "minibatch" and batch_size > len(train):
        raise ConfigError(f"training.batch_size ({batch_size}) is larger than the train split ({len(train)} "
                          "samples) in minibatch mode; lower it or use training.mode: batch")
    if shard.parallel and (chunk < shard.world or len(train) < shard.world):
        raise ConfigError(f"training.devices: {shard.world} processes share every batch, but batches hold "
                          f"{min(chunk, len(train))} sample(s); raise training.batch_size or lower training.devices")
    upe = updates_per_epoch(mode, len(train), batch_size, shard.world)
    loop = _Loop(model, optimizer, device, resolve_precision(precision, device), label_smoothing, grad_clip,
                 penalized_weights(model) if (l1 or l2) else [], l1, l2, augment, shard)
    train, val = train.to(device), val.to(device) if val is not None else None
    schedule = schedule or LRSchedule(optimizer, epochs=epochs, updates_per_epoch=upe)
    es = early_stopping or EarlyStopping(enabled=False, restore_best=False)
    logger = logger or NullLogger()
    shuffle = torch.Generator().manual_seed(seed)  # the same batch order on every rank
    aug_rng = torch.Generator(device=device).manual_seed(shard.seed(seed + 1))  # each rank its own draws
    drop_rng = _own_dropout(model, torch.Generator(device=device).manual_seed(shard.seed(seed + 2)))
    rngs = (shuffle, aug_rng, drop_rng)
    history, lrs, start, reason = [], [], 1, "completed"
    if resume and checkpoint and Path(checkpoint).exists():
        history, lrs, reason, start = _resume(checkpoint, model, optimizer, schedule, es, rngs, shard, epochs)
    for epoch in range(start, epochs + 1):
        metrics = _epoch(loop, train, val, chunk, accumulate, schedule, lrs, rngs, epoch, upe)
        history.append(metrics)
        logger.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        try:
            for callback in callbacks:
                callback.on_epoch_end(epoch, metrics)
        except StopTraining:
            reason = "callback"
        reason = shard.agree(reason)  # every rank stops together
        if es.update(epoch, metrics, model) and reason == "completed":
            reason = "early_stopping"
        schedule.step_epoch(metrics)
        if checkpoint:
            rng = shard.gather(_get_rng(*rngs))  # one state per rank
            if shard.rank == 0:
                save_checkpoint(checkpoint, epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                schedule=schedule.state_dict(), early_stopping=es.state_dict(),
                                rng=rng if shard.parallel else rng[0], history=history, lrs=lrs,
                                stop_reason=reason, meta=meta or {})
        if reason != "completed":
            break
    restored = es.restore(model)
    return FitResult(history, es.best_epoch, es.best, es.monitor, history[-1]["epoch"] if history else 0, reason,
                     restored, lrs, upe)


def _resume(checkpoint, model, optimizer, schedule, es, rngs, shard: Shard, epochs: int) -> tuple[list, list, str, int]:
    """Put a checkpoint's state into the training -> (history, LRs, stop reason, first epoch to run)."""
    ck = load_checkpoint(checkpoint)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    schedule.load_state_dict(ck["schedule"])
    es.load_state_dict(ck["early_stopping"])
    _set_rng(_rank_rng(ck["rng"], shard, checkpoint), *rngs)
    start = ck["epoch"] + 1 if ck["stop_reason"] == "completed" else epochs + 1  # a stopped run stays stopped
    return ck["history"], ck["lrs"], ck["stop_reason"], start


def _epoch(loop: _Loop, train: Data, val: Data | None, chunk: int, accumulate: int, schedule: LRSchedule,
           lrs: list[float], rngs: tuple, epoch: int, upe: int) -> dict[str, float]:
    """Train one epoch and validate -> its metrics, the same on every rank (rank 0 validates, and its numbers
    decide early stopping and the schedule everywhere)."""
    started, shard = time.perf_counter(), loop.shard
    try:
        metrics = loop.train_epoch(train.batches(chunk, rngs[0], shard), len(train), chunk, accumulate, schedule,
                                   lrs, rngs[1], epoch)
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise ConfigError(f"the model's batch norm saw a single value per channel ({exc}): the inputs are too "
                          "small for this model in batches of one; use training.mode: minibatch with "
                          "training.batch_size >= 2, or larger images") from None
    seconds = time.perf_counter() - started
    if val is not None and shard.rank == 0:
        metrics.update(loop.validate(val))
    metrics.update(epoch=epoch, updates=upe, epoch_seconds=time.perf_counter() - started,
                   samples_per_second=len(train) / max(seconds, 1e-9))
    return shard.agree(metrics)


@dataclass
class _Loop:
    """One epoch of training and one pass of validation."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: torch.dtype | None
    label_smoothing: float
    grad_clip: float | None
    weights: list[nn.Parameter]
    l1: float
    l2: float
    augment: Callable | None
    shard: Shard = SINGLE

    def __post_init__(self):
        self.model.to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.shard.wrap(self.model)  # what trains: the model, or its DDP wrapper

    def forward(self, x: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.amp):
            return (net or self.model)(x).float()

    def train_epoch(self, batches, n: int, chunk: int, accumulate: int, schedule: LRSchedule,
                    lrs: list[float], rng: torch.Generator, epoch: int) -> dict[str, float]:
        """One pass over n samples in batches of `chunk`, one update per `accumulate` batches (of which this
        rank trains on its shard)."""
        self.model.train()
        tally, penalties = _Tally(self.device, self.label_smoothing), []
        bounds, n_updates, world = batch_bounds(n, chunk, self.shard.world), 0, self.shard.world
        self.optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(batches):
            last_chunk = (i + 1) % accumulate == 0 or i + 1 == len(bounds)
            if self.augment is not None:
                x = self.augment(x, rng)
            with contextlib.nullcontext() if last_chunk or world == 1 else self.net.no_sync():  # reduce once
                logits = self.forward(x, self.net)
                loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                # weight the mean loss of these samples by their share of the update's (full-batch GD: of all
                # n; data-parallel: of the batch the ranks share, as DDP averages the ranks' gradients), so
                # that the update sees the mean over all its samples
                a, b = bounds[i]
                share = len(y) * world / (n if accumulate > 1 else b - a)
                objective = loss * share if share != 1 else loss
                if last_chunk and self.weights:
                    pen = penalty(self.weights, self.l1, self.l2)
                    objective = objective + pen
                    penalties.append(pen.detach())
                objective.backward()
            tally.add(loss, logits, y)
            if last_chunk:
                lrs.append(self.optimizer.param_groups[0]["lr"])
                if self.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                schedule.step_batch()
                n_updates += 1
        pen_mean = torch.stack(penalties).mean() if penalties else torch.zeros((), device=self.device)
        self.shard.sync_buffers(self.model)  # every rank goes on with rank 0's batch-norm statistics
        totals = self.shard.all_sum(torch.stack(tally.sums())) / n  # loss and accuracy over every rank's shards
        loss_v, acc_v, pen_v = torch.cat([totals, pen_mean.reshape(1)]).tolist()  # the one sync per epoch
        if not math.isfinite(loss_v):
            raise TrainingError(f"the training loss became NaN or infinite in epoch {epoch} at batch "
                                f"{tally.first_bad()}; lower optimizer.lr or check the data for extreme values")
        return {"train_loss": loss_v, "train_accuracy": acc_v, "penalty": pen_v, "lr": lrs[-n_updates]}

    @torch.no_grad()
    def validate(self, data: Data) -> dict[str, float]:
        self.model.eval()
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for x, y in data.batches(EVAL_BATCH):
            logits = self.forward(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        loss_v, acc_v = (torch.stack([loss_sum, correct]) / len(data)).tolist()
        return {"val_loss": loss_v, "val_accuracy": acc_v}


class _Tally:
    """The train metrics of an epoch without a host sync per batch: batch losses and logits stay device
    tensors (detached: no kernel per batch); the loss and accuracy are computed from the logits in a few
    large steps, every so many batches. The batch losses are only read to name a non-finite one."""

    HELD = 1 << 22  # logits elements kept before reducing (16 MB of fp32)
    BATCHES = 1024  # batches kept before reducing

    def __init__(self, device: torch.device, label_smoothing: float):
        self.label_smoothing, self.batch_losses, self.chunks = label_smoothing, [], []
        self.logits, self.targets, self.held = [], [], 0
        self.loss_sum, self.correct = torch.zeros((), device=device), torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.batch_losses.append(loss.detach())
        self.logits.append(logits.detach())
        self.targets.append(y)
        self.held += logits.numel()
        if self.held >= self.HELD or len(self.batch_losses) >= self.BATCHES:
            self._reduce()

    def _reduce(self) -> None:
        if not self.logits:
            return
        logits, targets = torch.cat(self.logits), torch.cat(self.targets)
        self.loss_sum += F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing, reduction="sum")
        self.correct += (logits.argmax(1) == targets).sum()
        self.chunks.append(torch.stack(self.batch_losses))
        self.batch_losses, self.logits, self.targets, self.held = [], [], [], 0

    def sums(self) -> list[torch.Tensor]:
        """[summed loss, correct predictions] as device scalars."""
        self._reduce()
        return [self.loss_sum, self.correct]

    def first_bad(self) -> int:
        """1-based number of the first batch whose loss is not finite (reads the device)."""
        bad = torch.nonzero(~torch.isfinite(torch.cat(self.chunks)))
        return int(bad[0, 0]) + 1 if len(bad) else 0


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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


def _get_rng(shuffle: torch.Generator, aug: torch.Generator, drop: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), "augment": aug.get_state(),
             "dropout": drop.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict, shuffle: torch.Generator, aug: torch.Generator, drop: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    aug.set_state(state["augment"])
    drop.set_state(state["dropout"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def predict_logits(model: nn.Module, data: Data, device: torch.device | str = "cpu",
                   precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) on the CPU for every sample of `data`, in order, with the model in eval mode."""
    device = torch.device(device)
    amp = resolve_precision(precision, device)
    model.to(device).eval()
    outs, labels = [], []
    for x, y in data.to(device).batches(EVAL_BATCH):
        with _autocast(device, amp):
            outs.append(model(x).float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)
