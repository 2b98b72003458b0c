"""1-D signals: samples of shape (C, L), C channels of L time steps, read from NumPy files or from a table's feature
columns folded into channels, and the generated waveform set (the signals' embedded default, as digits is the
images')."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from trainlib.errors import DataError

WAVE_CLASSES = ("sine", "square", "triangle", "sawtooth", "chirp")
WAVE_LENGTH, WAVE_PER_CLASS, WAVE_SEED = 128, 600, 0
LABEL_KEYS = ("y", "labels", "label")  # an .npz's labels array when data.target does not name one
INPUT_KEYS = ("x", "inputs", "signals")


def fold(x: np.ndarray, channels: int | None, source: str, names: list[str]) -> np.ndarray:
    """(N, F) feature columns -> (N, C, F / C) signals: the first F / C columns are channel 0's time steps, the next
    channel 1's, and so on (columns in their given order)."""
    c = channels or 1
    if x.shape[1] % c:
        raise DataError(f"{source}: {x.shape[1]} feature columns ({names[0]} .. {names[-1]}) do not fold into "
                        f"data.channels={c} channels of equal length")
    return np.ascontiguousarray(x.reshape(len(x), c, x.shape[1] // c))


def _as_signals(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise DataError(f"{where}: signals must be an (N, L) or (N, C, L) array; this one has shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: signals must be real numbers; this array holds {x.dtype}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(1)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} signals hold NaN or infinite values (the first: row "
                        f"{int(np.flatnonzero(bad)[0])})")
    return x


def numpy_arrays(path, labels=None, target="label", *, need_labels=True) -> tuple[np.ndarray, np.ndarray | None]:
    """The signals array as stored and its labels from an .npz (the signals: "x", "inputs", "signals" or its one
    array besides the labels; the labels: named by `target`, or "y", "labels", "label") or an .npy of signals (read
    through a memory map) with its labels in the .npy file `labels`. Without labels: an error when
    `need_labels`, else None."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path: no such file: {file}")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as arrays:
                keys = list(arrays)
                key = target if target in keys else next((k for k in LABEL_KEYS if k in keys), None)
                if key is None and need_labels:
                    raise DataError(f"numpy: {file} has no labels array named {target!r} (data.target) or "
                                    f"{', '.join(LABEL_KEYS)}; its arrays: {', '.join(keys)}")
                rest = [k for k in keys if k != key]
                name = next((k for k in INPUT_KEYS if k in rest), rest[0] if len(rest) == 1 else None)
                if name is None:
                    raise DataError(f"numpy: {file}: which array holds the signals? name it one of "
                                    f"{', '.join(INPUT_KEYS)} (its arrays: {', '.join(keys)})")
                x, y = arrays[name], None if key is None else arrays[key]
        elif file.suffix == ".npy":
            if labels is None and need_labels:
                raise DataError(f"numpy: {file} is an .npy of signals: give its labels as data.labels (an .npy of "
                                "N class labels), or put both in one .npz")
            if labels is not None and not Path(labels).is_file():
                raise DataError(f"data.labels: no such file: {labels}")
            x = np.load(file, mmap_mode="r", allow_pickle=False)
            y = None if labels is None else np.load(labels, allow_pickle=False)
        else:
            raise DataError(f"numpy: {file} is neither an .npz nor an .npy file")
    except (ValueError, OSError, EOFError) as exc:  # NumPy's messages for corrupt, truncated or pickled files
        raise DataError(f"numpy: cannot read {file}: {exc}") from exc
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"numpy: {file}: {len(x)} signals but labels of shape {y.shape} (one label per signal)")
    return x, y


def read_numpy(path, labels=None, target="label") -> tuple[np.ndarray, np.ndarray]:
    """(signals (N, C, L) float32, labels (N,)) from NumPy files (`numpy_arrays`)."""
    x, y = numpy_arrays(path, labels, target)
    return _as_signals(x, f"numpy: {Path(path)}"), y


def waveforms(per_class: int = WAVE_PER_CLASS, length: int = WAVE_LENGTH, seed: int = WAVE_SEED) -> np.ndarray:
    """The generated waveform set: `per_class` signals of each of WAVE_CLASSES, shape (N, 1, length) float32,
    class-major. Each is Gaussian noise (std 0.5) with a burst of its class's wave somewhere in it: a burst of
    a quarter to a half of the length, at a random place, of 3 to 8 cycles per 128 steps at a random phase and
    an amplitude of 0.6 to 1.4 (a chirp sweeps its frequency up by 3x through the burst). Where the burst is
    differs from sample to sample, so a model has to recognise the shape wherever it appears."""
    rng = np.random.default_rng(seed)
    n = per_class * len(WAVE_CLASSES)
    out = rng.normal(0.0, 0.5, (n, length)).astype(np.float32)
    t = np.arange(length)
    for i in range(n):
        kind = WAVE_CLASSES[i // per_class]
        span = int(rng.integers(length // 4, length // 2 + 1))
        start = int(rng.integers(0, length - span + 1))
        cycles = rng.uniform(3, 8) / 128  # per step
        phase = rng.uniform(0, 1)
        s = t[:span]
        if kind == "chirp":
            turns = phase + cycles * s * (1 + s / span)  # frequency rising from `cycles` to 3x
        else:
            turns = phase + cycles * s
        frac = turns % 1.0
        wave = {"sine": np.sin(2 * math.pi * turns), "chirp": np.sin(2 * math.pi * turns),
                "square": np.where(frac < 0.5, 1.0, -1.0), "triangle": 4 * np.abs(frac - 0.5) - 1,
                "sawtooth": 2 * frac - 1}[kind]
        out[i, start:start + span] += rng.uniform(0.6, 1.4) * wave
    return out[:, None, :]


def waveform_labels(per_class: int = WAVE_PER_CLASS) -> np.ndarray:
    return np.repeat(np.arange(len(WAVE_CLASSES)), per_class)


def write_waveforms(path: str | Path, per_class: int = WAVE_PER_CLASS, length: int = WAVE_LENGTH,
                    seed: int = WAVE_SEED) -> Path:
    """The waveform set as an .npz (x: (N, 1, L) float32, y: class names) or a CSV (columns t0..t{L-1}, label)."""
    path = Path(path)
    x, y = waveforms(per_class, length, seed), np.asarray(WAVE_CLASSES)[waveform_labels(per_class)]
    if path.suffix == ".csv":
        import pandas as pd

        frame = pd.DataFrame(x[:, 0, :], columns=[f"t{i}" for i in range(length)])
        frame["label"] = y
        frame.to_csv(path, index=False, float_format="%.5g")
    else:
        np.savez(path, x=x, y=y)
    return path


def as_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
