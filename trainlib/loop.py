"""The training step: one update, one epoch of training and one pass of validation, the engine's inner loop
(trainlib.engine.fit drives it; trainlib.lr_finder.sweep makes its updates through it too), and the options
that say how it trains (`Step`) and where (`Runtime`).

Hot-loop rules: data already on the device, batches by index slicing, no host syncs per batch (losses and
accuracies accumulate as device tensors and are read once per epoch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainlib.averaging import Averaged
from trainlib.data.batches import Data, batch_bounds, rows_per_pass
from trainlib.device import resolve_precision
from trainlib.distributed import SINGLE, Shard
from trainlib.errors import Interrupted, TrainingError
from trainlib.models import Dropout
from trainlib.optim import penalized_weights, penalty
from trainlib.schedules import LRSchedule
from trainlib.streams import Streams
from trainlib.tally import Tally

_SCOPE: ContextVar[list[str] | None] = ContextVar("trainlib_stop_scope", default=None)  # see `stoppable`


@contextlib.contextmanager
def stoppable() -> Iterator[Callable[[str], None]]:
    """For the block, a `stop(reason)` that ends, at their next batch with `Interrupted(reason)`, the trainings
    started in this context and in threads that run in a copy of it (Prefect's thread task runs do), and none other
    of the process. A signal reaches the main thread only: this is how trainings in other threads learn of it."""
    scope: list[str] = []
    token = _SCOPE.set(scope)
    try:
        yield scope.append
    finally:
        _SCOPE.reset(token)


@dataclass(frozen=True)
class Step:
    """How each update is made (trainlib.engine.fit, trainlib.lr_finder.sweep: both train through `Loop`).

    optimizer: built over the model's parameters; schedule: its LR per update and per epoch (fit's default:
      constant; the range test sets the LR itself).
    mode: batch (one update per epoch, every sample, accumulated over chunks of `batch_size`), minibatch (updates
      of `batch_size` samples, or of `accumulate` batches of them) or stochastic (updates of 1 sample).
    l1, l2: penalty weights on the weight tensors (not biases or norms), added to the data loss.
    label_smoothing: as torch's cross_entropy; grad_clip: largest gradient norm (None: no clipping).
    augment: callable (x, generator) -> x, applied to every training batch on the device.
    mix: callable (x, y, cpu generator) -> (x, soft targets), after `augment` (trainlib.data.mix: mixup, cutmix);
      train accuracy then counts the soft targets' argmax."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule | None = None
    mode: str = "minibatch"
    batch_size: int = 64
    accumulate: int = 1
    l1: float = 0.0
    l2: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    augment: Callable | None = None
    mix: Callable | None = None


@dataclass(frozen=True)
class Runtime:
    """Where and how the arithmetic runs, and the seed it draws from.

    device: where to train; precision: auto | fp32 | bf16 | fp16 (trainlib.device.resolve_precision);
    compile: train through torch.compile (the first batches pay the compilation; validation runs the plain model);
    seed: data order, augmentation, mixing and dropout draw from generators seeded from it (trainlib.streams),
      never the global RNG; seeds: a source's own seed in place of `seed` (training.seeds);
    shard: this process's rank in a data-parallel training (trainlib.distributed), which trains on its part of
      every batch; the default is one process."""

    device: torch.device | str = "cpu"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    shard: Shard = SINGLE
    seeds: dict[str, int] | None = None  # a source's own seed (order, augment, dropout) where it has one


CPU = Runtime()  # the default: one process on the CPU, seed 0


@dataclass
class Loop:
    """One update, one epoch of training and one pass of validation, by `step`'s rules on `runtime`'s device.
    Built whole: the model moves to the device, trainlib's dropout layers get the run's dropout stream, and
    `averaging` (trainlib.averaging: a factory over the model, e.g. EMA or SWA) makes the average told of every
    update."""

    model: nn.Module
    step: Step
    runtime: Runtime = CPU
    averaging: Callable[[nn.Module], Averaged] | None = None

    def __post_init__(self):
        self.device = torch.device(self.runtime.device)
        self.shard, self.optimizer = self.runtime.shard, self.step.optimizer
        self.amp = resolve_precision(self.runtime.precision, self.device)
        self.streams = Streams.seeded(self.runtime.seed, self.device, self.shard, self.runtime.seeds)
        self.weights = penalized_weights(self.model) if (self.step.l1 or self.step.l2) else []
        self.model.to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.average = self.averaging(self.model) if self.averaging is not None else None
        for module in self.model.modules():  # torch's global RNG is shared by threads
            if isinstance(module, Dropout):
                module.generator = self.streams.dropout
        self.net = self.shard.wrap(self.model)  # what trains: the model, or its DDP wrapper
        if self.runtime.compile:
            self.net = torch.compile(self.net)
        # fp16 autocast: a scaled loss keeps small gradients from flushing to zero; steps with inf/NaN skipped
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp is torch.float16 else None

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def forward(self, x: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return (self.model if net is None else net)(self.layout(x)).float()

    def backward(self, x: torch.Tensor, y: torch.Tensor, share: float = 1.0,
                 last: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one batch (augmented, then mixed), its mean loss weighted by `share` of the
        update's samples; on the `last` batch of an update the penalty joins (and data-parallel ranks reduce
        their gradients) -> (loss, logits, target, penalty or None)."""
        if self.step.augment is not None:
            x = self.step.augment(x, self.streams.augment)
        target = y
        if self.step.mix is not None:
            x, target = self.step.mix(x, y, self.streams.mix)
        pen = None
        with contextlib.nullcontext() if last or self.shard.world == 1 else self.net.no_sync():  # reduce once
            logits = self.forward(x, self.net)
            loss = F.cross_entropy(logits, target, label_smoothing=self.step.label_smoothing)
            objective = loss * share if share != 1 else loss
            if last and self.weights:
                pen = penalty(self.weights, self.step.l1, self.step.l2)
                objective = objective + pen
            (self.scaler.scale(objective) if self.scaler else objective).backward()
        return loss, logits, target, pen

    def update(self) -> None:
        """The optimizer step on the gradients the batches left (clipped, scaled), then the average's turn."""
        if self.step.grad_clip:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
            nn.utils.clip_grad_norm_(self.model.parameters(), self.step.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.after_update(self.model)

    def train_epoch(self, batches, n: int, chunk: int, accumulate: int, schedule: LRSchedule,
                    lrs: list[float], epoch: int) -> dict[str, float]:
        """One pass over n samples in batches of `chunk`, one update per `accumulate` batches (of which this
        rank trains on its shard)."""
        self.model.train()
        tally, penalties = Tally(self.device, self.step.label_smoothing), []
        bounds, n_updates, world = batch_bounds(n, chunk, self.shard.world), 0, self.shard.world
        sizes = [b - a for a, b in bounds]  # samples of each update: the batches it accumulates
        update_size = [sum(sizes[j - j % accumulate:j - j % accumulate + accumulate]) for j in range(len(bounds))]
        self.optimizer.zero_grad(set_to_none=True)
        scope = _SCOPE.get()
        for i, (x, y) in enumerate(batches):
            if scope:
                raise Interrupted(scope[0])
            last = (i + 1) % accumulate == 0 or i + 1 == len(bounds)
            # weight the mean loss of these samples by their share of the update's (accumulated: of all the
            # batches of the update, n in full-batch GD; data-parallel: of the batch the ranks share, as DDP
            # averages the ranks' gradients), so that the update sees the mean over all its samples
            loss, logits, target, pen = self.backward(x, y, len(y) * world / update_size[i], last)
            if pen is not None:
                penalties.append(pen.detach())
            tally.add(loss, logits, target)
            if last:
                lrs.append(self.optimizer.param_groups[0]["lr"])
                self.update()
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
    def validate(self, data: Data, model: nn.Module | None = None) -> dict[str, float]:
        """Loss and accuracy over `data` of `model` (default: the one trained) in eval mode."""
        model = self.model if model is None else model
        model.eval()
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for x, y in data.batches(rows_per_pass(data.sample_shape)):
            logits = self.forward(x, model)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        loss_v, acc_v = (torch.stack([loss_sum, correct]) / len(data)).tolist()
        return {"val_loss": loss_v, "val_accuracy": acc_v}


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
