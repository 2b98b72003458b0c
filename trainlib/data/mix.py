"""Batch mixing: mixup and cutmix, per sample within the batch, with soft targets.

As in the torchvision classification reference (--mixup-alpha, --cutmix-alpha) and timm's Mixup in its
per-element mode: sample i is mixed with sample perm[i] of the same batch (a random cycle: never itself) at its
own ratio lam_i drawn from Beta(alpha, alpha); mixup blends the two inputs, cutmix pastes a box of the partner
covering 1 - lam_i of the image (the box is clipped at the border and lam_i is then the area actually kept).
The target of sample i is lam_i x onehot(y_i) + (1 - lam_i) x onehot(y_perm[i]). Validation and test never mix.

Every draw comes from a CPU generator of its own (the ratios through NumPy's Beta, seeded from it), so mixing
adds no host sync per batch on an accelerator and leaves the augmentation's and dropout's draws unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class Mixer:
    """mixup (`mixup` = its alpha, 0 off) and cutmix (`cutmix` = its alpha, 0 off, images only). A sample is mixed
    with probability `prob`; with both on it gets cutmix with probability `switch`, else mixup."""

    def __init__(self, classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch: float = 0.5):
        if not (mixup or cutmix):
            raise ValueError("a Mixer needs mixup or cutmix (an alpha above 0)")
        self.classes, self.mixup, self.cutmix, self.prob = classes, mixup, cutmix, prob
        self.switch = switch if mixup and cutmix else float(bool(cutmix))  # share of mixed samples cut

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        """A batch (N, ...) with integer labels (N,) -> (the mixed inputs as float32, soft targets (N, classes))."""
        n, device = len(y), x.device
        order = torch.randperm(n, generator=generator)  # partners along a random cycle: no sample is its own
        perm = torch.empty_like(order)
        perm[order] = order.roll(-1)
        u = torch.rand(3, n, generator=generator)  # mixed?, cut?, and one more draw seeding the Beta ratios
        rng = np.random.default_rng(int(u[2, 0] * 2**53))
        mixed, cut = u[0] < self.prob, u[1] < self.switch
        lam = torch.ones(n, dtype=torch.float64)
        if self.mixup:
            lam = torch.where(mixed & ~cut, torch.from_numpy(rng.beta(self.mixup, self.mixup, n)), lam)
        if self.cutmix:
            lam = torch.where(mixed & cut, torch.from_numpy(rng.beta(self.cutmix, self.cutmix, n)), lam)
        x, perm_d = x.float(), perm.to(device)
        partner = x[perm_d]
        blend = (mixed & ~cut).to(device)
        if self.mixup:
            w = torch.where(blend, lam.to(device, torch.float32), 1.0).view(n, *[1] * (x.ndim - 1))
            out = torch.lerp(partner, x, w)  # w x + (1 - w) partner
        else:
            out = x
        if self.cutmix:
            inside, kept = _boxes(x.shape, lam, generator, device)
            inside &= (mixed & cut).to(device).view(n, 1, 1)
            out = torch.where(inside.unsqueeze(1), partner, out)
            lam = torch.where(mixed & cut, kept, lam)
        lam = lam.to(device, torch.float32).view(n, 1)
        targets = lam * F.one_hot(y, self.classes).float() + (1 - lam) * F.one_hot(y[perm_d], self.classes).float()
        return out, targets


def _boxes(shape: torch.Size, lam: torch.Tensor, generator: torch.Generator,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, a box covering about 1 - lam of the (H, W) image, centred uniformly, clipped at the border
    -> (its mask (N, H, W) on `device`, the fraction of the image outside it on the CPU: the ratio kept)."""
    n, h, w = shape[0], shape[-2], shape[-1]
    side = torch.sqrt(1 - lam)
    cy, cx = torch.rand(2, n, generator=generator, dtype=torch.float64) * torch.tensor([[h], [w]])
    top, bottom = (cy - side * h / 2).round().clamp(0, h), (cy + side * h / 2).round().clamp(0, h)
    left, right = (cx - side * w / 2).round().clamp(0, w), (cx + side * w / 2).round().clamp(0, w)
    edges = torch.stack([top, bottom, left, right]).to(device, torch.float32).view(4, n, 1, 1)
    rows, cols = torch.arange(h, device=device).view(1, h, 1), torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= edges[0]) & (rows < edges[1]) & (cols >= edges[2]) & (cols < edges[3])
    kept = 1 - (bottom - top) * (right - left) / (h * w)
    return inside, kept
