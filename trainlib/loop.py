"""One epoch of training and one pass of validation: the engine's inner loop (trainlib.engine.fit drives it).

Hot-loop rules: data already on the device, batches by index slicing, no host syncs per batch (losses and
accuracies accumulate as device tensors and are read once per epoch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainlib.averaging import Averaged
from trainlib.data.batches import Data, batch_bounds, rows_per_pass
from trainlib.distributed import SINGLE, Shard
from trainlib.errors import TrainingError
from trainlib.optim import penalty
from trainlib.schedules import LRSchedule
from trainlib.tally import Tally


@dataclass
class Loop:
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
    mix: Callable | None = None  # (x, y, generator) -> (x, soft targets)
    average: Averaged | None = None  # weight averaging (trainlib.averaging): told of every optimizer step
    compile: bool = False  # train through torch.compile (validation runs the plain model)

    def __post_init__(self):
        self.model.to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.shard.wrap(self.model)  # what trains: the model, or its DDP wrapper
        if self.compile:
            self.net = torch.compile(self.net)
        # fp16 autocast: a scaled loss keeps small gradients from flushing to zero; steps with inf/NaN skipped
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp is torch.float16 else None

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def forward(self, x: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return (self.model if net is None else net)(self.layout(x)).float()

    def train_epoch(self, batches, n: int, chunk: int, accumulate: int, schedule: LRSchedule,
                    lrs: list[float], rng: torch.Generator, epoch: int,
                    mix_rng: torch.Generator | None = None) -> dict[str, float]:
        """One pass over n samples in batches of `chunk`, one update per `accumulate` batches (of which this
        rank trains on its shard)."""
        self.model.train()
        tally, penalties = Tally(self.device, self.label_smoothing), []
        bounds, n_updates, world = batch_bounds(n, chunk, self.shard.world), 0, self.shard.world
        sizes = [b - a for a, b in bounds]  # samples of each update: the batches it accumulates
        update_size = [sum(sizes[j - j % accumulate:j - j % accumulate + accumulate]) for j in range(len(bounds))]
        self.optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(batches):
            last_chunk = (i + 1) % accumulate == 0 or i + 1 == len(bounds)
            if self.augment is not None:
                x = self.augment(x, rng)
            target = y
            if self.mix is not None:
                x, target = self.mix(x, y, mix_rng)
            with contextlib.nullcontext() if last_chunk or world == 1 else self.net.no_sync():  # reduce once
                logits = self.forward(x, self.net)
                loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
                # weight the mean loss of these samples by their share of the update's (accumulated: of all the
                # batches of the update, n in full-batch GD; data-parallel: of the batch the ranks share, as DDP
                # averages the ranks' gradients), so that the update sees the mean over all its samples
                share = len(y) * world / update_size[i]
                objective = loss * share if share != 1 else loss
                if last_chunk and self.weights:
                    pen = penalty(self.weights, self.l1, self.l2)
                    objective = objective + pen
                    penalties.append(pen.detach())
                (self.scaler.scale(objective) if self.scaler else objective).backward()
            tally.add(loss, logits, target)
            if last_chunk:
                lrs.append(self.optimizer.param_groups[0]["lr"])
                if self.grad_clip:
                    if self.scaler:
                        self.scaler.unscale_(self.optimizer)  # clip the true gradients
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.average is not None:
                    self.average.after_update(self.model)
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
