"""Device choice, CPU thread caps, and moving a module (an exported program too) to a device."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

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


def resolve_device(name: str = "auto", key: str = "training.device") -> torch.device:
    """`auto` picks CUDA when present, else CPU; asking for an absent device is a config error (naming `key`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{key}: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {name!r} asked for, but CUDA is not available here (use auto or cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          f"devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` is bf16 on CUDA and fp32 on CPU
    (bf16 is slower than fp32 on the CPUs measured here); fp16 trains with a gradient scaler (trainlib.loop)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def pinned(graph: torch.fx.Graph) -> list[str]:
    """The nodes of an exported program's graph that name a device, as text: none in a device-neutral program."""
    return [node.format_node() for node in graph.nodes
            if any(isinstance(v, torch.device) for v in (*node.args, *node.kwargs.values()))]


def to_device(module: nn.Module, device: torch.device | str) -> nn.Module:
    """`module` (a loaded exported program, or holding some) on `device`, in place: its weights and buffers, and the
    nodes of its graphs that name a device."""
    device = torch.device(device)
    for graph_module in module.modules():
        if isinstance(graph_module, torch.fx.GraphModule) and pinned(graph_module.graph):
            for node in graph_module.graph.nodes:
                node.args = tuple(device if isinstance(v, torch.device) else v for v in node.args)
                node.kwargs = {k: device if isinstance(v, torch.device) else v for k, v in node.kwargs.items()}
            graph_module.recompile()
    return module.to(device)
