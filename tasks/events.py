"""Progress events: how tasks and flows tell whoever listens in this process what is happening.

Tasks and flows `emit` an event; anything in the same process (the CLI's progress bars, a test) receives
every event while it is inside `listening(listener)`. An event is one of these types:

- `Epoch`: a training task finished an epoch (its run, the epoch, that epoch's metrics).
- `Finished`: a trial, variant or ensemble member finished, failed or was pruned (its name, score, state).
- `Claimed`: an entry of the technique study finished or failed (its result, tasks/summaries.py ClaimResult).
- `RowsRead`: batch scoring scored a batch (rows so far, rows to read, unreadable included).

Listeners are per process: a task running in another process (a Dask worker, a deployment's worker) has
none, so its events go nowhere. That is why the flows emit `finished` themselves, for every result they
collect, wherever it ran. A listener that raises stops what emitted (a training callback, e.g.).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.summaries import ClaimResult


@dataclass(frozen=True)
class Epoch:
    run_id: str
    epoch: int
    metrics: dict[str, float] = field(hash=False)


@dataclass(frozen=True)
class Claimed:
    result: ClaimResult


@dataclass(frozen=True)
class RowsRead:
    done: int  # rows read so far, scored or skipped
    total: int


@dataclass(frozen=True)
class Finished:
    """A `finished` event's record: a trial, variant or member that finished, as progress shows it."""

    name: str
    value: float | None = None  # its score: best validation accuracy (variants, members), a trial's value
    state: str = "complete"  # or failed, pruned, discarded


Event = Epoch | Finished | Claimed | RowsRead
Listener = Callable[[Event], None]
_listeners: list[Listener] = []
_lock = threading.Lock()  # tasks in threads emit while the CLI adds or removes listeners


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every event emitted in this process to `listener` while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def emit(event: Event) -> None:
    """Tell the listeners of this process."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event)


class EpochEvents:
    """A trainlib engine callback that emits an `Epoch` event after every epoch of run `run_id`."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        emit(Epoch(self.run_id, epoch, metrics))
