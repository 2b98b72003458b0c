"""Augmentation policies: AutoAugment (ImageNet policy), RandAugment, TrivialAugmentWide and AugMix, with
torchvision's operations and magnitude tables, drawn per sample on whole batches on the device.

torchvision's versions draw one operation per call, so on a batch tensor every image gets the same one. Here each
sample draws its own: an operation index and a magnitude per sample; the geometric operations of a step run as
one affine_grid/grid_sample over the batch, every other operation is computed for the batch and kept where it was
drawn (torch.where). No per-sample Python and no host sync (on the CPU, operations no sample drew are skipped).
Images are in [0, 1] here (Augmenter divides by the source's value_max); posterize, solarize and equalize work
on their 8-bit levels, as on uint8 images. Geometric operations turn about the image centre and fill with 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainlib.registry import Registry

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale

# (name, probability, magnitude bin) pairs of torchvision's AutoAugmentPolicy.IMAGENET
IMAGENET = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 0), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 0)), (("Posterize", 0.8, 5), ("Equalize", 1.0, 0)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 0), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 0)),
    (("Equalize", 0.0, 0), ("Equalize", 0.8, 0)), (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 0)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 0)), (("Color", 0.4, 0), ("Equalize", 0.6, 0)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
)


@functools.cache  # per batch otherwise; the tables are only read
def space(kind: str, bins: int, h: int, w: int) -> dict[str, tuple[torch.Tensor, bool]]:
    """torchvision's magnitude tables: op -> (magnitude per bin, signed). kind: standard (AutoAugment, RandAugment),
    wide (TrivialAugmentWide) or augmix. Solarize's thresholds are in [0, 1] (torchvision's 255..0 / 255)."""
    wide, augmix = kind == "wide", kind == "augmix"
    lin = lambda top: torch.linspace(0.0, top, bins)  # noqa: E731
    posterize = (4 if augmix else 8) - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4))).round()
    out = {
        "ShearX": (lin(0.99 if wide else 0.3), True), "ShearY": (lin(0.99 if wide else 0.3), True),
        "TranslateX": (lin(32.0 if wide else w / 3.0 if augmix else 150.0 / 331.0 * w), True),
        "TranslateY": (lin(32.0 if wide else h / 3.0 if augmix else 150.0 / 331.0 * h), True),
        "Rotate": (lin(135.0 if wide else 30.0), True),
        **{op: (lin(0.99 if wide else 0.9), True) for op in ("Brightness", "Color", "Contrast", "Sharpness")},
        "Posterize": (posterize, False), "Solarize": (torch.linspace(1.0, 0.0, bins), False),
        "AutoContrast": (torch.zeros(bins), False), "Equalize": (torch.zeros(bins), False),
    }
    return out if augmix else {"Identity": (torch.zeros(bins), False), **out}


def _uniform(n: int, g, device, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * high


def _draw(table: dict[str, tuple[torch.Tensor, bool]], n: int, g, device, bins: torch.Tensor | int | None = None,
          severity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: an operation of `table` (uniformly) and its magnitude: at bin `bins` (a number, or per sample),
    or a bin drawn uniformly below `severity` (default: among all), negated half the time where signed."""
    names = list(table)
    ops = (_uniform(n, g, device, len(names))).long().clamp(max=len(names) - 1)
    mags = torch.stack([table[k][0].to(device) for k in names])  # (ops, bins)
    top = mags.shape[1] if severity is None else severity
    if bins is None:
        bins = (_uniform(n, g, device, top)).long().clamp(max=top - 1)
    elif isinstance(bins, int):
        bins = torch.full((n,), bins, device=device, dtype=torch.long)
    signed = torch.tensor([table[k][1] for k in names], device=device)[ops]
    sign = torch.where(signed & (_uniform(n, g, device) < 0.5), -1.0, 1.0)
    index = torch.tensor([OPS.index(k) for k in names], device=device)[ops]
    return index, mags[ops, bins] * sign


def apply(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Sample i gets OPS[op[i]] at magnitude[i] (x in [0, 1], (N, C, H, W))."""
    n, out = len(x), x
    geometric = torch.zeros(n, dtype=torch.bool, device=x.device)
    for name in GEOMETRIC:
        geometric |= op == OPS.index(name)
    if _drawn(geometric):
        out = torch.where(geometric.view(n, 1, 1, 1), _affine(x, op, magnitude), out)
    for name, fn in COLOR.items():
        chosen = op == OPS.index(name)
        if _drawn(chosen):
            out = torch.where(chosen.view(n, 1, 1, 1), fn(x, magnitude.view(n, 1, 1, 1)), out)
    return out


def _drawn(mask: torch.Tensor) -> bool:
    """Whether to compute an operation: on an accelerator always (asking would sync), on the CPU if drawn."""
    return mask.device.type != "cpu" or bool(mask.any())


def _affine(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Every geometric operation of the batch as one grid_sample: per sample, the output -> input map."""
    n, _, h, w = x.shape
    is_ = lambda name: (op == OPS.index(name)).to(x.dtype)  # noqa: E731
    angle = m * is_("Rotate") * (math.pi / 180)  # a positive angle turns the image counter-clockwise
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, 0, 1] -= m * is_("ShearX") * h / w  # x_in = x_out - s y_out (pixels)
    theta[:, 1, 0] -= m * is_("ShearY") * w / h
    theta[:, 0, 2] = -2 * m * is_("TranslateX") / w  # shifted right by m pixels
    theta[:, 1, 2] = -2 * m * is_("TranslateY") / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    return (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (other + factor * (x - other)).clamp(0.0, 1.0)


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    blurred = F.conv2d(x, (kernel / 13).expand(c, 1, 3, 3), groups=c)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = blurred  # torchvision keeps the border pixels
    return _blend(x, smooth, 1 + m)


def _levels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = 2 ** (8 - bits.round())
    return torch.floor(_levels(x) / step) * step / 255


def _autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    return torch.where(flat, x, (x - low) / torch.where(flat, 1.0, high - low)).clamp(0.0, 1.0)


def _equalize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Histogram equalization per image and channel on 8-bit levels (torchvision's _equalize_single_image)."""
    n, c, h, w = x.shape
    v = _levels(x).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=x.dtype).scatter_add_(1, v, torch.ones_like(v, dtype=x.dtype))
    last = 255 - (hist > 0).flip(1).to(torch.uint8).argmax(1, keepdim=True)  # the highest level present
    step = torch.div(hist.sum(1, keepdim=True) - hist.gather(1, last), 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1),
                    rounding_mode="floor")
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, v), v.to(x.dtype))
    return (out / 255).view(n, c, h, w)


COLOR: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": lambda x, m: _blend(x, torch.zeros_like(x), 1 + m),
    "Color": lambda x, m: _blend(x, _gray(x), 1 + m) if x.shape[1] == 3 else x,
    "Contrast": lambda x, m: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), 1 + m),
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": lambda x, m: torch.where(x >= m, 1.0 - x, x),
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": lambda x, m: 1.0 - x,
}


# ---------------------------------------------------------------- the policies: (x in [0, 1], generator, knobs) -> x


def trivial_augment(x: torch.Tensor, g, ops: int, magnitude: int) -> torch.Tensor:
    """TrivialAugmentWide: one operation per sample, its magnitude uniform over the 31 bins of the wide table."""
    op, m = _draw(space("wide", 31, *x.shape[-2:]), len(x), g, x.device)
    return apply(x, op, m)


def rand_augment(x: torch.Tensor, g, ops: int, magnitude: int) -> torch.Tensor:
    """RandAugment: `ops` operations in a row per sample, each at bin `magnitude` of 31."""
    table = space("standard", 31, *x.shape[-2:])
    for _ in range(ops):
        x = apply(x, *_draw(table, len(x), g, x.device, bins=magnitude))
    return x


def auto_augment(x: torch.Tensor, g, ops: int, magnitude: int) -> torch.Tensor:
    """AutoAugment's ImageNet policy: per sample one of its 25 sub-policies, each of its two operations applied
    with its probability at its bin (of 10), negated half the time where signed."""
    n, device = len(x), x.device
    table = space("standard", 10, *x.shape[-2:])
    chosen = _uniform(n, g, device, len(IMAGENET)).long().clamp(max=len(IMAGENET) - 1)
    for step in range(2):
        names = [p[step][0] for p in IMAGENET]
        op = torch.tensor([OPS.index(k) for k in names], device=device)[chosen]
        prob = torch.tensor([p[step][1] for p in IMAGENET], device=device)[chosen]
        bins = torch.tensor([p[step][2] for p in IMAGENET], device=device)[chosen]
        mags = torch.stack([table[k][0].to(device) if k in table else torch.zeros(10, device=device) for k in names])
        signed = torch.tensor([table.get(k, (None, False))[1] for k in names], device=device)[chosen]
        sign = torch.where(signed & (_uniform(n, g, device) < 0.5), -1.0, 1.0)
        op = torch.where(_uniform(n, g, device) < prob, op, OPS.index("Identity"))
        x = apply(x, op, mags[chosen, bins] * sign)
    return x


def augmix(x: torch.Tensor, g, ops: int, magnitude: int) -> torch.Tensor:
    """AugMix (severity 3, width 3, depth 1-3, alpha 1, all operations: torchvision's defaults): per sample, three
    chains of 1-3 operations mixed with Dirichlet(1, 1, 1) weights, and the mix blended with the image at a
    Beta(1, 1) ratio. With alpha 1 both are normalized exponential draws, so the device generator serves."""
    n, device, width = len(x), x.device, 3
    table = space("augmix", 10, *x.shape[-2:])
    e = -torch.log(1 - _uniform(n * (width + 2), g, device)).view(n, width + 2)
    keep = e[:, 0] / (e[:, 0] + e[:, 1])  # Beta(1, 1): the original's share
    weights = e[:, 2:] / e[:, 2:].sum(1, keepdim=True) * (1 - keep).view(n, 1)
    mixed = keep.view(n, 1, 1, 1) * x
    for chain in range(width):
        depth = 1 + _uniform(n, g, device, 3).long().clamp(max=2)
        aug = x
        for d in range(3):
            op, m = _draw(table, n, g, device, severity=3)
            aug = apply(aug, torch.where(depth > d, op, OPS.index("Identity")), m)
        mixed = mixed + weights[:, chain].view(n, 1, 1, 1) * aug
    return mixed


POLICIES: Registry[Callable[..., torch.Tensor] | None] = Registry("augmentation policy", {
    "none": None, "autoaugment": auto_augment, "randaugment": rand_augment, "trivialaugment": trivial_augment,
    "augmix": augmix,
})
