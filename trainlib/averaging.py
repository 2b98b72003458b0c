"""Weight averaging: an exponential moving average of the weights (torchvision's --model-ema, timm's ModelEmaV3)
and stochastic weight averaging (Izmailov et al. 2018; torch.optim.swa_utils, Lightning's
StochasticWeightAveraging). Each keeps its own copy of the model; the engine validates on it, and the trained
model ends with its weights.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from torch import nn

from trainlib.errors import ConfigError

EMA_WARMUP = 10  # timm: the decay ramps up as (1 + n) / (10 + n) over the first updates


def check(ema_decay: float, swa_start: int, early_stopping: bool) -> None:
    """What weight averaging cannot be combined with (training.ema, training.swa)."""
    if ema_decay and swa_start:
        raise ConfigError("training.ema and training.swa: average the weights one way at a time")
    if swa_start and early_stopping:
        raise ConfigError("training.swa: averages the epochs from swa.start to the end, and early stopping would end "
                          "them early or keep a single epoch's weights; set training.early_stopping.enabled: false")


def averaging(ema_decay: float = 0.0, ema_warmup: bool = True,
              swa_start: int = 0) -> Callable[[nn.Module], Averaged] | None:
    """The hook trainlib.engine.fit takes for training.ema / training.swa: a factory of the average over the
    model, or None for neither. One at a time."""
    check(ema_decay, swa_start, early_stopping=False)
    if ema_decay:
        return functools.partial(EMA, decay=ema_decay, warmup=ema_warmup)
    return functools.partial(SWA, start=swa_start) if swa_start else None


class Averaged:
    """A copy of `model` whose float tensors (weights and float buffers) hold a running average; integer buffers
    (batch norm's counts) follow the model. What the engine asks of each kind of average: when it takes the
    weights (after_update, after_epoch), whether validation watches it during training (`validated`), what it
    needs before the model takes its weights (finish), and the prefix of its own final val metrics (None: the
    val_* metrics were its own already)."""

    validated = False
    prefix: str | None = None

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def after_update(self, model: nn.Module) -> None:
        """After every optimizer step."""

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """After every epoch (1-based)."""

    def finish(self, batches) -> None:
        """Before the trained model takes the average's weights; `batches`: the train inputs, once over."""

    def check(self, early_stopping: bool) -> None:
        """ConfigError where the average cannot go with early stopping."""

    @torch.no_grad()
    def _mix(self, model: nn.Module, weight: float) -> None:
        """average += weight x (model - average), for every float tensor."""
        mine, theirs = self.model.state_dict(), model.state_dict()
        avg = [t for k, t in mine.items() if t.is_floating_point()]
        new = [theirs[k] for k, t in mine.items() if t.is_floating_point()]
        torch._foreach_lerp_(avg, new, weight)
        for k, t in mine.items():
            if not t.is_floating_point():
                t.copy_(theirs[k])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


class EMA(Averaged):
    """After every optimizer update: average = d x average + (1 - d) x weights, with d = `decay`, or with `warmup`
    min(decay, (1 + n) / (10 + n)) at the n-th update, so early weights are soon forgotten. Validation and early
    stopping watch the average."""

    validated = True

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        super().__init__(model)
        self.decay, self.warmup = decay, warmup

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (EMA_WARMUP + n)) if self.warmup else self.decay

    def update(self, model: nn.Module) -> None:
        self._mix(model, 1.0 - self.current_decay())

    def after_update(self, model: nn.Module) -> None:
        self.update(model)


class SWA(Averaged):
    """The equal-weight average of the weights at the end of every epoch from `start` (1-based) on: the n-th
    update moves the average 1/n of the way to the weights. Its batch norms are recomputed at the end, and its
    final val metrics are swa_val_*."""

    prefix = "swa_"

    def __init__(self, model: nn.Module, start: int = 1):
        super().__init__(model)
        self.start = start

    def update(self, model: nn.Module) -> None:
        self._mix(model, 1.0 / (self.updates + 1))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if epoch >= self.start:
            self.update(model)

    def finish(self, batches) -> None:
        recompute_batch_norm(self.model, batches)

    def check(self, early_stopping: bool) -> None:
        check(0.0, self.start, early_stopping)


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches) -> bool:
    """Batch-norm statistics of averaged weights, recomputed over `batches` of inputs (torch.optim.swa_utils.
    update_bn: the running statistics of averaged weights belong to none of the models averaged). Returns whether
    the model has batch norms."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return True
