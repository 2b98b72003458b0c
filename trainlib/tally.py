"""The train loss and accuracy of an epoch, tallied on the device without a host sync per batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Tally:
    """The train metrics of an epoch without a host sync per batch: batch losses and logits stay device
    tensors (detached: no kernel per batch); the loss and accuracy are computed from the logits every few
    dozen batches. The batch losses are only read to name a non-finite one.

    Few batches are kept: each kept tensor is a small allocation that lives across the steps, and on the CPU
    those land in the holes the steps' large freed buffers leave and split them, so the heap grows with the
    number of steps (keeping up to 1,024 batches: +60-120 MiB over two epochs of 547 batches; 32: +20)."""

    HELD = 1 << 22  # logits elements kept before reducing (16 MB of fp32)
    BATCHES = 32  # batches kept before reducing

    def __init__(self, device: torch.device, label_smoothing: float):
        self.label_smoothing, self.batch_losses, self.chunks = label_smoothing, [], []
        self.logits, self.targets, self.held = [], [], 0
        self.loss_sum, self.correct = torch.zeros((), device=device), torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """One batch: its mean loss, logits and targets (class indices, or soft targets (N, K) of mixed batches,
        whose argmax counts as the class)."""
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
        self.correct += (logits.argmax(1) == (targets.argmax(1) if targets.ndim > 1 else targets)).sum()
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
