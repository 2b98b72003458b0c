"""Normalization fitted on the train split: per channel (images, signals) or per feature (tabular).

Every method is an affine map y = (x - shift) * scale, so one small module applies any of them and
ships inside the model: an exported model takes raw inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from trainlib.checkpoint import atomic_path
from trainlib.registry import Registry

EPS = 1e-8  # floor for a range or std, so constant features map to 0 instead of dividing by zero


@dataclass(frozen=True)
class Moments:
    """Per-channel (or per-feature) statistics of the train split."""

    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]


def _none(m: Moments):
    return [0.0] * len(m.mean), [1.0] * len(m.mean)


def _minmax(m: Moments):  # [0, 1]
    return m.min, [1.0 / max(hi - lo, EPS) for lo, hi in zip(m.min, m.max, strict=True)]


def _symmetric(m: Moments):  # [-1, 1]
    return ([(lo + hi) / 2 for lo, hi in zip(m.min, m.max, strict=True)],
            [2.0 / max(hi - lo, EPS) for lo, hi in zip(m.min, m.max, strict=True)])


def _standardize(m: Moments):  # zero mean, unit variance
    return m.mean, [1.0 / max(s, EPS) for s in m.std]


NORMALIZERS: Registry[Callable[[Moments], tuple[list[float], list[float]]]] = Registry(
    "normalization method",
    {"none": _none, "minmax": _minmax, "symmetric": _symmetric, "standardize": _standardize},
)


@dataclass(frozen=True)
class NormStats:
    method: str
    shift: list[float]
    scale: list[float]
    moments: Moments
    dims: int  # of a sample: 3 per channel of (N, C, H, W) images, 2 of (N, C, L) signals, 1 per feature of (N, F)

    def module(self) -> Normalize:
        return Normalize(self.shift, self.scale, self.dims)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        d = json.loads(text)
        dims = d["dims"] if "dims" in d else 3 if d["image"] else 1  # "image": models saved before signals
        return cls(d["method"], d["shift"], d["scale"], Moments(**d["moments"]), dims)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        return cls.from_json(Path(path).read_text())


class Normalize(nn.Module):
    """(x - shift) * scale per channel/feature; casts raw (e.g. uint8) inputs to float first. The cast is there only
    for inputs that need it: a traced `x.float()` of a float input becomes a check pinning the tracing device (an
    exported model would then run nowhere else)."""

    def __init__(self, shift: list[float], scale: list[float], dims: int):
        super().__init__()
        shape = (1, -1) + (1,) * (dims - 1)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(shape))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x if x.dtype == torch.float32 else x.float()) - self.shift) * self.scale


def moments(chunks: Iterable[torch.Tensor]) -> Moments:
    """Per-channel moments over batches of (N, C, ...) or per feature over (N, F), accumulated in float64."""
    count, total, squares, lo, hi = 0, None, None, None, None
    for chunk in chunks:
        x = chunk.to(torch.float64).transpose(0, 1).reshape(chunk.shape[1], -1)  # (C, N*H*W)
        if total is None:
            total, squares = torch.zeros(len(x), dtype=torch.float64), torch.zeros(len(x), dtype=torch.float64)
            lo, hi = x.min(1).values, x.max(1).values
        total += x.sum(1)
        squares += (x * x).sum(1)
        lo, hi = torch.minimum(lo, x.min(1).values), torch.maximum(hi, x.max(1).values)
        count += x.shape[1]
    if total is None:
        raise ValueError("no data to fit normalization statistics on")
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return Moments(mean.tolist(), std.tolist(), lo.tolist(), hi.tolist())


def fit(method: str, chunks: Iterable[torch.Tensor], dims: int) -> NormStats:
    """Fit `method` on the train split's data (given as one tensor or as batches) of samples with `dims`
    dimensions."""
    to_params = NORMALIZERS[method]
    m = moments([chunks] if isinstance(chunks, torch.Tensor) else chunks)
    shift, scale = to_params(m)
    return NormStats(method, [float(v) for v in shift], [float(v) for v in scale], m, dims)
