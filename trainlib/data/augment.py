"""Per-sample data augmentation applied to whole batches on the training device.

Every sample gets its own random parameters, drawn as tensors: one `affine_grid`/`grid_sample` call
does rotation, scaling, translation and flips for the whole batch, color jitter is a few batched
tensor ops, and random erasing is a batched mask. No per-sample Python. Labels are never touched.
Inputs are in raw units (0..value_max); color operations work on x / value_max in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainlib.data.policies import POLICIES

LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ; hue rotates the chroma (I, Q) plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
ERASE_AREA = (0.02, 0.33)  # fraction of the image erased, as torchvision's RandomErasing
ERASE_RATIO = (0.3, 3.3)  # aspect ratio range of the erased rectangle


class Augmenter:
    """Random per-sample transforms. Strengths follow torchvision: `rotation` in degrees (+-),
    `scale` a (low, high) zoom range, `translate` a fraction of the image size (+-), flips and
    `erasing` are probabilities, color jitter factors are drawn from [1 - s, 1 + s], `hue` is a
    fraction of a full turn (+-, at most 0.5), `noise` is the std of Gaussian noise in [0, 1] units. `policy` is one
    of trainlib.data.policies (RandAugment: `policy_ops` operations at bin `policy_magnitude` of 31)."""

    def __init__(self, *, rotation: float = 0.0, scale: tuple[float, float] = (1.0, 1.0), translate: float = 0.0,
                 hflip: float = 0.0, vflip: float = 0.0, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0, erasing: float = 0.0, noise: float = 0.0,
                 policy: str = "none", policy_ops: int = 2, policy_magnitude: int = 9, value_max: float = 1.0,
                 **_unused):
        self.rotation, self.scale, self.translate = rotation, tuple(scale), translate
        self.hflip, self.vflip, self.erasing, self.noise = hflip, vflip, erasing, noise
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.value_max = value_max
        self.policy, self.policy_ops, self.policy_magnitude = POLICIES[policy], policy_ops, policy_magnitude

    @property
    def geometric(self) -> bool:
        return bool(self.rotation or self.scale != (1.0, 1.0) or self.translate or self.hflip or self.vflip)

    @property
    def color(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation or self.hue or self.noise)

    @property
    def active(self) -> bool:
        return self.geometric or self.color or bool(self.erasing) or self.policy is not None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (N, C, H, W) of raw-unit images; returns float32 of the same shape."""
        x = x.float()
        if self.geometric:
            x = self._affine(x, generator)
        if self.color:
            x = self._color(x, generator)
        if self.policy is not None:  # as in torchvision's recipe: after the crops and flips, before erasing
            x = self.policy(x / self.value_max, generator, self.policy_ops, self.policy_magnitude)
            x = x.clamp(0.0, 1.0) * self.value_max
        if self.erasing:
            x = self._erase(x, generator)
        return x

    def _uniform(self, n: int, low: float, high: float, g, device) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g, device=device)

    def _affine(self, x: torch.Tensor, g) -> torch.Tensor:
        n, _, h, w = x.shape
        u = lambda lo, hi: self._uniform(n, lo, hi, g, x.device)  # noqa: E731
        angle = u(-self.rotation, self.rotation) * (math.pi / 180)
        zoom = u(*self.scale)
        shift = torch.stack([u(-self.translate, self.translate), u(-self.translate, self.translate)], 1) * 2
        flip_x = torch.where(u(0, 1) < self.hflip, -1.0, 1.0)
        flip_y = torch.where(u(0, 1) < self.vflip, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # grid_sample needs output -> input coordinates: the inverse of flip, zoom, rotate (in pixel
        # space, hence the h/w aspect terms), then shift.
        inv = torch.stack([torch.stack([cos * flip_x, sin * (h / w) * flip_x], 1),
                           torch.stack([-sin * (w / h) * flip_y, cos * flip_y], 1)], 1) / zoom.view(n, 1, 1)
        theta = torch.cat([inv, -(inv @ shift.unsqueeze(2))], 2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _color(self, x: torch.Tensor, g) -> torch.Tensor:
        n, c = x.shape[:2]
        u = lambda lo, hi: self._uniform(n, lo, hi, g, x.device).view(n, 1, 1, 1)  # noqa: E731
        x = x / self.value_max
        if self.brightness:
            x = x * u(max(0.0, 1 - self.brightness), 1 + self.brightness)
        if self.contrast:
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * u(max(0.0, 1 - self.contrast), 1 + self.contrast) + mean
        if c == 3 and self.saturation:
            gray = _gray(x)
            x = gray + (x - gray) * u(max(0.0, 1 - self.saturation), 1 + self.saturation)
        if c == 3 and self.hue:
            x = _rotate_hue(x, u(-self.hue, self.hue).view(n) * (2 * math.pi))
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=g, device=x.device)
        return x.clamp(0.0, 1.0) * self.value_max

    def _erase(self, x: torch.Tensor, g) -> torch.Tensor:
        n, _, h, w = x.shape
        u = lambda lo, hi: self._uniform(n, lo, hi, g, x.device)  # noqa: E731
        area = u(*ERASE_AREA)
        ratio = torch.exp(u(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
        eh = (torch.sqrt(area * ratio) * h).clamp(1, h)
        ew = (torch.sqrt(area / ratio) * w).clamp(1, w)
        top, left = u(0, 1) * (h - eh), u(0, 1) * (w - ew)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
                  & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)))
        chosen = (u(0, 1) < self.erasing).view(n, 1, 1)
        return x.masked_fill((inside & chosen).unsqueeze(1), 0.0)

    def expand(self, x: torch.Tensor, y: torch.Tensor, copies: int, generator: torch.Generator | None = None,
               chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline augmentation: the originals plus `copies` augmented copies of every sample."""
        return expand(self, x, y, copies, generator, chunk)

    def preview(self, x: torch.Tensor, y: torch.Tensor, samples: int = 8, rows: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(rows + 1, samples, C, H, W): originals (one per class first) then augmented versions."""
        return preview(self, x, y, samples, rows, generator)


def expand(augment, x: torch.Tensor, y: torch.Tensor, copies: int, generator: torch.Generator | None = None,
           chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The originals plus `copies` copies of every sample through `augment` (any augmenter: x, generator -> x),
    `chunk` samples at a time; labels repeated to match."""
    parts = [x.float()]
    for _ in range(copies):
        parts += [augment(x[i:i + chunk], generator) for i in range(0, len(x), chunk)]
    return torch.cat(parts), y.repeat(copies + 1)


def preview(augment, x: torch.Tensor, y: torch.Tensor, samples: int, rows: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """(rows + 1, samples, *sample shape): `samples` originals (one per class first), then `rows` times each of
    them through `augment`."""
    firsts = [int(torch.nonzero(y == c)[0]) for c in torch.unique(y)][:samples]
    taken = set(firsts)
    rest = [i for i in range(min(len(y), 2 * samples)) if i not in taken]
    originals = x[torch.tensor((firsts + rest)[:samples])].float()
    return torch.stack([originals] + [augment(originals, generator) for _ in range(rows)])


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    yiq = _YIQ.to(x.device, x.dtype)
    cos, sin, one, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)  # (N, 3, 3)
    m = torch.linalg.inv(yiq) @ rot @ yiq
    return torch.einsum("nij,njhw->nihw", m, x)
