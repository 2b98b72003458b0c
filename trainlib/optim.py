"""Optimizers (name -> builder) and the L1/L2 penalties added to the loss."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from trainlib.registry import Registry


def _sgd(params, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0, **_unused):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _adam(params, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **_unused):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _adamw(params, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **_unused):
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _rmsprop(params, *, lr, momentum=0.0, alpha=0.99, eps=1e-8, weight_decay=0.0, **_unused):
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)


def _adagrad(params, *, lr, eps=1e-10, weight_decay=0.0, **_unused):
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = Registry("optimizer", {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop, "adagrad": _adagrad,
})


def build(name: str, params: Iterable[nn.Parameter] | Sequence[dict], **options) -> torch.optim.Optimizer:
    """The named optimizer over `params` (parameters, or param groups with their own `lr`)."""
    return OPTIMIZERS[name](params, **options)


NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def decay_groups(model: nn.Module, params: Iterable[nn.Parameter] | Sequence[dict], weight_decay: float,
                 norm: float | None = None, bias: float | None = None) -> Iterable[nn.Parameter] | list[dict]:
    """Param groups with a weight decay per kind of parameter (torchvision's --norm-weight-decay and
    --bias-weight-decay): the scales and shifts of norm layers get `norm`, other biases `bias`, every other
    parameter `weight_decay`; None: weight_decay. Each group of `params` (parameters, or dicts with options of their
    own such as transfer's backbone LR) is split by kind in that order, so the first group stays first. `params`
    unchanged when neither is given."""
    if norm is None and bias is None:
        return params
    in_norms = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    biases = {id(p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"} - in_norms
    groups = list(params)
    groups = groups if groups and isinstance(groups[0], dict) else [{"params": groups}]
    out = []
    for group in groups:
        members = list(group["params"])
        kinds = [([p for p in members if id(p) not in in_norms | biases], weight_decay),
                 ([p for p in members if id(p) in in_norms], weight_decay if norm is None else norm),
                 ([p for p in members if id(p) in biases], weight_decay if bias is None else bias)]
        out += [group | {"params": ps, "weight_decay": wd} for ps, wd in kinds if ps]
    return out


def penalized_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights that L1/L2 act on: matrices and conv kernels, not biases or norm scales/shifts. Frozen ones
    count too (a constant while frozen): transfer learning may unfreeze them mid-training."""
    return [p for p in model.parameters() if p.ndim > 1]


def penalty(weights: Sequence[torch.Tensor], l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """l1 * sum|w| + l2 * sum w^2 over `weights`, as a scalar tensor on their device."""
    total = torch.zeros((), device=weights[0].device if weights else None)
    if l1:
        total = total + l1 * sum(w.abs().sum() for w in weights)
    if l2:
        total = total + l2 * sum(w.pow(2).sum() for w in weights)
    return total
