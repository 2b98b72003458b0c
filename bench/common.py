"""What every benchmark shares: the machine's description, repeated timing, markdown tables."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

import torch

from trainlib.device import cpu_quota


def machine() -> str:
    """One line: CPU model and quota, memory, GPU (if any), torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"
    return (f"{cpu}, {cpu_quota()} CPUs usable, {mem:.0f} GiB{gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounds(ours: Callable[[], float], theirs: Callable[[], float], repeats: int,
           warmup: int = 1, first: int = 0) -> tuple[list[float], list[float]]:
    """Each side's measures over `repeats` rounds after `warmup` unmeasured ones. Each round runs both back to
    back, in alternating order (ours first in even rounds, counted from `first`), so drift in the machine's speed
    (a shared VM) affects both sides of a ratio alike. Each run returns its own measure (a rate)."""
    for _ in range(warmup):
        ours(), theirs()
    a, b = [], []
    for i in range(first, first + repeats):
        if i % 2:
            b.append(theirs())
            a.append(ours())
        else:
            a.append(ours())
            b.append(theirs())
    return a, b


def paired(ours: Callable[[], float], theirs: Callable[[], float], repeats: int,
           warmup: int = 1) -> tuple[float, float, float]:
    """(median of ours, median of theirs, median of the per-round ratios ours/theirs) over `rounds`."""
    a, b = rounds(ours, theirs, repeats, warmup)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b, strict=True))


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of `values`' population: the k-th smallest and k-th largest
    value, k the largest for which the two hold the median with probability >= `level` (order statistics of a
    Binomial(n, 1/2)). Fewer than 6 values cannot give a 95% interval: (min, max) then."""
    xs, n = sorted(values), len(values)
    below = lambda k: sum(math.comb(n, i) for i in range(k)) / 2**n  # noqa: E731  P(fewer than k below the median)
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * below(k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k]


def stopwatch(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds `fn()` takes (waiting for the GPU to finish when on CUDA)."""
    if device is not None:
        sync(device)
    start = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - start


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (readable in a terminal, pasteable into docs/benchmarks.md)."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def header(title: str) -> str:
    return f"## {title}\n\n{machine()}; commit {commit()}\n"
