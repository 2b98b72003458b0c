"""Data-parallel training: one process per device with torch DistributedDataParallel, started torchrun-style
from inside the calling process (ranks 0..N-1 in a process group over a TCP store this process holds).

Every rank walks the same shuffled order and takes its contiguous shard of each batch; its loss is weighted
by the shard's share, so DDP's average of the ranks' gradients is the gradient of the whole batch and the
updates are those of one process, up to float rounding. Dropout masks, augmentation and batch-norm
statistics are drawn or computed per rank (on CPU torch has no synchronized batch norm), so with those on a
run differs from the one-process run as another seed would. Rank 0 validates (its numbers decide early stopping
and the schedule on every rank), writes the checkpoints and reports every epoch to the calling process, which
passes it on to the logger and the callbacks. Those observe: the ranks run on meanwhile, and an exception from
a callback (a pruned trial) stops them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainlib.errors import ConfigError, TrainflowError, TrainingError

STOP_SECONDS = 5  # how long a stopped rank may take to end before it is killed
STORE_TIMEOUT = timedelta(seconds=120)  # how long a rank waits for the others to join (each imports torch)
POLL_SECONDS = 0.05  # how often the calling process looks for reports and ended ranks
PR_SET_PDEATHSIG = 1  # prctl option: a signal the kernel sends when the parent dies


class RankFailed(RuntimeError):
    """A rank failed unexpectedly or died: not bad input, not a diverging loss, so worth a retry."""


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel training: rank of world, on `device`. The default is one
    process, where every method does nothing."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def bounds(self, a: int, b: int) -> tuple[int, int]:
        """This rank's contiguous part of the batch [a, b)."""
        size = b - a
        return a + size * self.rank // self.world, a + size * (self.rank + 1) // self.world

    def seed(self, base: int) -> int:
        """A seed for this rank's own random draws (rank 0 keeps `base`: one process is rank 0 of 1)."""
        return base + 1_000_003 * self.rank

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.parallel:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            dist.all_reduce(tensor)
        return tensor

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics), so that all evaluate the same model."""
        if self.parallel:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def agree(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a decision all must take together)."""
        if not self.parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.parallel:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


SINGLE = Shard()


class Relay:
    """Rank 0's logger and callback: sends each report to the calling process."""

    def __init__(self, queue):
        self.queue = queue

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.queue.put(("metrics", metrics, step))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.queue.put(("epoch", epoch, metrics))


def check_devices(devices: int, device: torch.device) -> None:
    """`devices` processes fit on `device`'s kind: at most one per CUDA device (any number on CPU)."""
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise ConfigError(f"training.devices: {devices} asked for, but {torch.cuda.device_count()} CUDA device(s) "
                          "are visible")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"training.devices: data-parallel training runs on cpu or cuda, not {device.type}")


def run(devices: int, device: torch.device, job: Callable[..., dict], args: Sequence, *, logger=None,
        callbacks: Sequence = ()) -> dict:
    """Run `job(shard, relay, *args)` in `devices` new processes, one per device (CUDA devices 0..N-1, or CPU
    processes on the gloo backend); returns what rank 0's job returned (tensors, numbers, lists, dicts). Rank 0
    gets a Relay whose reports reach `logger` and `callbacks` here; the others get None. A failing rank fails
    the whole training with its error."""
    check_devices(devices, device)
    store = dist.TCPStore("127.0.0.1", 0, devices + 1, is_master=True, timeout=STORE_TIMEOUT,
                          wait_for_workers=False)
    spawn = mp.get_context("spawn")  # torch's reductions: tensors in `args` travel by shared memory
    queue = spawn.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="trainlib-ddp-") as tmp:
        result = Path(tmp) / "rank0.pt"
        ranks = [spawn.Process(target=_rank, name=f"trainlib-rank-{rank}", args=(
            rank, devices, store.port, device.type, job, tuple(args), queue, str(result), os.getpid()))
            for rank in range(devices)]
        try:
            errors = _watch(ranks, queue, logger, callbacks)
            # a rank killed by a signal (the OOM killer, a SIGKILL) said nothing: the others' errors are its echo
            killed = [f"rank {r} was killed ({signal.Signals(-p.exitcode).name})" for r, p in enumerate(ranks)
                      if p.exitcode is not None and p.exitcode < 0]
            if killed:
                errors = [RankFailed(f"data-parallel training: {', '.join(killed)}")]
        finally:
            for process in ranks:
                if process.is_alive():
                    process.terminate()  # a rank inside a collective may not see it: then it is killed
                    process.join(STOP_SECONDS)
                    process.kill()
                if process.pid is not None:
                    process.join()
        if errors:
            raise errors[0]
        if any(p.exitcode for p in ranks) or not result.exists():
            codes = ", ".join(f"rank {r}: {p.exitcode}" for r, p in enumerate(ranks))
            raise RankFailed(f"data-parallel training: a process ended without a result (exit codes {codes})")
        return torch.load(result, map_location="cpu", weights_only=True)


def _watch(ranks: list, queue, logger, callbacks) -> list[Exception]:
    """Start the ranks and pass their reports on until they end, or one fails; -> the errors they sent."""
    try:
        for process in ranks:
            process.start()
    except AssertionError:  # multiprocessing: "daemonic processes are not allowed to have children"
        raise ConfigError(f"training.devices: {len(ranks)} processes cannot start here: this is a daemonic process "
                          "(a Dask worker under a nanny: start `dask worker` with --no-nanny)") from None
    errors: list[Exception] = []
    while not errors and any(p.is_alive() for p in ranks):
        errors = _deliver(queue, logger, callbacks)
        if any(p.exitcode for p in ranks):  # one ended badly: the others may wait for it for ever
            break
        time.sleep(POLL_SECONDS)
    return errors + _deliver(queue, logger, callbacks)


def _deliver(queue, logger, callbacks) -> list[Exception]:
    """Pass the ranks' reports on; -> the errors they sent."""
    errors = []
    while not queue.empty():
        kind, *message = queue.get()
        if kind == "metrics" and logger is not None:
            logger.log_metrics(message[0], step=message[1])
        elif kind == "epoch":
            for callback in callbacks:
                callback.on_epoch_end(*message)
        elif kind == "error":
            errors.append(message[1])
    return errors


def _die_with_parent(parent: int) -> None:
    """Let the kernel kill this rank when the calling process dies (even by SIGKILL): no orphans that go on
    training and writing the checkpoint. A rank stopped by the calling process (SIGTERM) ends at once and
    quietly (no exit handlers waiting on the process group's threads)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the ranks end when their process group breaks
        return
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


def _rank(rank: int, world: int, port: int, device_type: str, job: Callable[..., dict], args: tuple, queue,
          result: str, parent: int) -> None:
    """One rank's process: join the group, run the job, hand rank 0's result over (a file) or the error."""
    _die_with_parent(parent)
    code = 0
    try:
        device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False, timeout=STORE_TIMEOUT)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world, timeout=STORE_TIMEOUT)
        out = job(Shard(rank, world, device), Relay(queue) if rank == 0 else None, *args)
        if rank == 0:
            torch.save(out, result)
        dist.destroy_process_group()
    except BaseException as exc:
        queue.put(("error", rank, _portable(exc)))
        code = 1
    # End now: what was to hand over is written (the file; the queue writes at once). The interpreter's own
    # shutdown can abort in the process group's threads ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _portable(exc: BaseException) -> Exception:
    """The error as this library's own kind (it crosses a process boundary by pickle)."""
    if isinstance(exc, TrainflowError | TrainingError) and type(exc).__module__.startswith("trainlib"):
        return exc
    return RankFailed(f"rank failed: {type(exc).__name__}: {exc}")
