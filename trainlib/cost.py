"""What a training cost: wall seconds, CPU seconds and peak memory, measured around it (`measured`).

CPU time and resident memory are counted per process by the operating system. A training that runs alone in its
process (`trainflow run`, a Dask worker, a warm fork, a data-parallel rank) gets exact figures. Trainings that run
as threads of one process at the same time (a compare or tune on the thread runner) share the process's counters:
the CPU time of each stretch in which the same trainings were running is split equally among them (they run the
same loop on equally many torch threads), and the peak memory is the process's during the training. `Cost.shared`
says how many trainings at most ran at once, so a reader knows which figures are exact (1) and which are shares.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

MB = 1024 * 1024


@dataclass(frozen=True)
class Cost:
    """One training's cost (seconds, megabytes); `shared`: the most trainings this process ran at once during it."""

    wall_seconds: float
    cpu_seconds: float
    peak_memory_mb: float
    shared: int = 1
    peak_gpu_memory_mb: float | None = None

    def metrics(self) -> dict[str, float]:
        """The run's cost metrics, as logged (train_wall_seconds, train_cpu_seconds, train_peak_memory_mb, ...)."""
        out = {"train_wall_seconds": round(self.wall_seconds, 3), "train_cpu_seconds": round(self.cpu_seconds, 3),
               "train_peak_memory_mb": round(self.peak_memory_mb, 1), "train_shared": float(self.shared)}
        if self.peak_gpu_memory_mb is not None:
            out["train_peak_gpu_memory_mb"] = round(self.peak_gpu_memory_mb, 1)
        return out


def process_cpu() -> float:
    """CPU seconds (user + system) of this process and of its children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) since it started or was last reset, in MB."""
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    import resource  # not Linux: the lifetime peak (ru_maxrss is in kB on Linux, bytes on macOS)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def _reset_peak_rss() -> None:
    """Start the process's peak resident memory again from now (Linux >= 4.0); elsewhere it stays the lifetime's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class _Ledger:
    """The process's CPU time, shared out among the trainings running: settled whenever one starts or ends, so the
    trainings running are the same between two settlements."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[int, list[float]] = {}  # id -> [cpu seconds so far, most running at once]
        self.last = 0.0
        self.next_id = 0

    def _settle(self) -> None:
        now = process_cpu()
        if self.running:
            share = (now - self.last) / len(self.running)
            for account in self.running.values():
                account[0] += share
        self.last = now

    def open(self) -> int:
        with self.lock:
            self._settle()
            if not self.running:
                _reset_peak_rss()  # alone: the peak is this training's
            self.next_id += 1
            self.running[self.next_id] = [0.0, 1]
            for account in self.running.values():
                account[1] = max(account[1], len(self.running))
            return self.next_id

    def close(self, key: int) -> tuple[float, int]:
        with self.lock:
            self._settle()
            cpu, most = self.running.pop(key)
            return cpu, int(most)


LEDGER = _Ledger()


class Meter:
    """Filled in when its `measured` block ends: `.cost`."""

    cost: Cost | None = None


@contextlib.contextmanager
def measured(device: torch.device | None = None) -> Iterator[Meter]:
    """Measure the block (a training): its Cost is on the yielded Meter afterwards, even when the block raised."""
    meter, start, key = Meter(), time.perf_counter(), LEDGER.open()
    gpu = device is not None and device.type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield meter
    finally:
        cpu, most = LEDGER.close(key)
        meter.cost = Cost(time.perf_counter() - start, cpu, peak_rss_mb(), most,
                          torch.cuda.max_memory_allocated(device) / MB if gpu else None)
