"""Device choice and CPU thread caps."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from trainlib.errors import ConfigError


def cpu_quota() -> int:
    """CPUs this process may really use: the smaller of its affinity and its cgroup quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def memory_quota() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def configure_threads(threads: int | None = None) -> int:
    """Cap torch's intra-op threads (default: the CPU quota; more threads than cores only thrash)."""
    n = threads or cpu_quota()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; asking for an absent device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"training.device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} asked for, but CUDA is not available here (use auto or cpu)")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` is bf16 on CUDA and fp32 on CPU
    (bf16 is slower than fp32 on the CPUs measured here); fp16 trains with a gradient scaler (trainlib.loop)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16
