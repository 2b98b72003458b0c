"""Per-sample augmentation of 1-D signals (N, C, L), applied to whole batches on the training device.

As for images (trainlib.data.augment): every sample draws its own parameters as tensors, and one gather with
linear interpolation does the shift, time stretch and flip of the whole batch; amplitude, noise and erasing are
batched tensor ops. No per-sample Python. Inputs are in raw units; labels are never touched.
"""

from __future__ import annotations

import torch

from trainlib.data import augment
from trainlib.data.augment import ERASE_AREA


class SignalAugmenter:
    """Random per-sample transforms of signals, with the image transforms' meaning of strength where one exists:
    `translate` shifts by up to that fraction of the length (+-), circularly with `wrap` (what leaves one end comes
    back at the other) or else padded with zeros; `scale` a (low, high) range of time-stretch factors (about the
    middle; above 1 slows the signal down); `hflip` the probability of reversing time; `amplitude` a factor drawn
    from [1 - a, 1 + a]; `noise` the std of Gaussian noise in units of the sample's own std (per channel);
    `erasing` the probability of zeroing a random span of 2-33% of the length."""

    def __init__(self, *, translate: float = 0.0, scale: tuple[float, float] = (1.0, 1.0), hflip: float = 0.0,
                 wrap: bool = False, amplitude: float = 0.0, noise: float = 0.0, erasing: float = 0.0, **_unused):
        self.translate, self.scale, self.hflip, self.wrap = translate, tuple(scale), hflip, wrap
        self.amplitude, self.noise, self.erasing = amplitude, noise, erasing

    @property
    def temporal(self) -> bool:
        return bool(self.translate or self.scale != (1.0, 1.0) or self.hflip)

    @property
    def active(self) -> bool:
        return self.temporal or bool(self.amplitude or self.noise or self.erasing)

    def draw(self, n: int, generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
        """The time transforms' parameters of `n` samples: shift (a fraction of the length), stretch, flip (+-1)."""
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator, device=device)  # noqa: E731
        return {"shift": u(-self.translate, self.translate), "stretch": u(*self.scale),
                "flip": torch.where(u(0, 1) < self.hflip, -1.0, 1.0)}

    def warp(self, x: torch.Tensor, shift: torch.Tensor, stretch: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Each sample stretched by `stretch` about the middle, reversed where `flip` is -1, then moved later by
        `shift` x L steps: out[t] = x[p] with p = flip (t - mid) / stretch + mid - shift L, linearly interpolated
        between steps; outside the signal, zeros (or, with `wrap`, the other end)."""
        n, c, length = x.shape
        mid = (length - 1) / 2
        t = torch.arange(length, device=x.device, dtype=torch.float32).view(1, length)
        p = (flip.view(n, 1) * (t - mid) / stretch.view(n, 1) + mid - shift.view(n, 1) * length)  # (N, L)
        low = torch.floor(p)
        w = (p - low).unsqueeze(1)  # (N, 1, L): the weight of the step above
        low = low.long()
        out = torch.zeros_like(x)
        for index, weight in ((low, 1 - w), (low + 1, w)):
            if self.wrap:
                inside, index = None, index.remainder(length)
            else:
                inside = ((index >= 0) & (index < length)).unsqueeze(1)
                index = index.clamp(0, length - 1)
            taken = torch.gather(x, 2, index.unsqueeze(1).expand(n, c, length)) * weight
            out += taken if inside is None else taken * inside
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (N, C, L) of raw-unit signals; returns float32 of the same shape."""
        x = x.float()
        n, device = len(x), x.device
        if self.temporal:
            x = self.warp(x, **self.draw(n, generator, device))
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 1, 1, generator=generator, device=device)  # noqa: E731
        if self.amplitude:
            x = x * u(max(0.0, 1 - self.amplitude), 1 + self.amplitude)
        if self.noise:
            x = x + self.noise * x.std(2, keepdim=True) * torch.randn(x.shape, generator=generator, device=device)
        if self.erasing:
            length = x.shape[2]
            span = u(*ERASE_AREA) * length
            start = u(0, 1) * (length - span)
            t = torch.arange(length, device=device).view(1, 1, length)
            erased = (t >= start) & (t < start + span) & (u(0, 1) < self.erasing)
            x = x.masked_fill(erased, 0.0)
        return x

    def expand(self, x: torch.Tensor, y: torch.Tensor, copies: int, generator: torch.Generator | None = None,
               chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline augmentation: the originals plus `copies` augmented copies of every sample."""
        return augment.expand(self, x, y, copies, generator, chunk)

    def preview(self, x: torch.Tensor, y: torch.Tensor, samples: int = 6, rows: int = 3,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(rows + 1, samples, C, L): originals (one per class first) then augmented versions."""
        return augment.preview(self, x, y, samples, rows, generator)
