"""The reference: a minimal, good hand-written PyTorch training loop (what an engineer would write
without a framework). Data in memory on the device, batches by slicing a shuffled index, no metrics,
no host syncs; bf16 autocast and channels_last when asked."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def hand_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, *,
              epochs: int, batch_size: int, augment: Callable | None = None, amp: torch.dtype | None = None,
              channels_last: bool = False, seed: int = 0) -> None:
    """Train `model` on (x, y), already on the training device, for `epochs`."""
    device = x.device
    order_rng = torch.Generator().manual_seed(seed)
    aug_rng = torch.Generator(device=device).manual_seed(seed + 1)
    model.train()
    n = len(y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_rng).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, aug_rng)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
            with autocast:
                loss = F.cross_entropy(model(xb).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
