"""How a `trainflow` process ends when it is told to: every process it starts ends with it.

Python's default action for SIGTERM and SIGHUP kills the process on the spot: no `finally`, no exit handler, so
an MLflow run stays RUNNING and a temporary server keeps its port. `stop_cleanly_on_signals` turns them into
`Stopped`, a SystemExit raised in the main thread: every `finally` and exit handler runs, the MLflow run is
marked FAILED with the signal as its reason, and the exit code is 128 + the signal number, what a shell reports
for a process the signal killed. SIGINT keeps Python's KeyboardInterrupt (exit code 130). (Prefect's flow engine
puts its own SIGTERM handler in place while a flow runs; when it has cancelled the run it signals the process
again with the handler it found, this one.)

Two guards keep a stop from hanging: a second signal ends the process at once, and so does the first one if
the clean-up has not finished within GRACE seconds (a training step in another thread cannot be interrupted).
A process's children are the other half: `die_with_parent` (PR_SET_PDEATHSIG) ends a child whose parent dies,
also by SIGKILL, where no handler runs.

Servers (`trainflow ui`, `serve-model`, `serve`) follow one rule of their own, `served_until_stopped`: once serving,
SIGINT, SIGTERM and SIGHUP each shut the server down cleanly, and being stopped is how its work ends: stderr says
`stopped (SIGINT)` and the exit code is 0. That holds whatever the process inherited, with one exception: a script's
background job starts with SIGINT ignored (the shell's doing, so that Ctrl+C on the script spares it), and
`kill -INT` must still stop the server; a SIGHUP inherited ignored is `nohup`'s, the user's own request to survive
a hang-up, and stays ignored.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

GRACE = 20.0  # seconds the clean-up after a signal may take before the process ends without it
SIGNALS = (signal.SIGTERM, signal.SIGHUP)
SERVER_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # prctl option: the signal the kernel sends a process when its parent dies

try:
    _LIBC = ctypes.CDLL(None)  # loaded now: a child between fork and exec must not import or load anything
except OSError:
    _LIBC = None


class Stopped(SystemExit):
    """The process was told to stop by `signum`; exits with 128 + signum once the clean-up has run."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:  # the reason recorded on an MLflow run it ends
        return f"stopped by {signal.Signals(self.signum).name}"


_stopped_by: list[int] = []  # the signal that stopped this process, once one has


def _stop(signum: int, _frame) -> None:
    code = 128 + signum
    if _stopped_by:  # told twice: the user does not want to wait for the clean-up
        os._exit(code)
    _stopped_by.append(signum)
    os.write(2, f"\nstopping ({signal.Signals(signum).name}) ...\n".encode())  # print() may be mid-write here
    timer = threading.Timer(GRACE, os._exit, [code])
    timer.daemon = True
    timer.start()
    raise Stopped(signum)


def stop_cleanly_on_signals() -> None:
    """In the main thread, before anything starts (and before other exit handlers are registered): SIGTERM and
    SIGHUP raise `Stopped`, unless the process was started with the signal ignored (`nohup`: SIGHUP), which then
    stays ignored. (`trainflow ui` still stops on a hang-up under nohup: its server handles SIGHUP itself.)"""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)
    atexit.register(_end_after_stop)


def _end_after_stop() -> None:
    """The last exit handler: after a stop, end the process once the other exit handlers have run. The
    interpreter would go on with a garbage collection over everything torch, Prefect and MLflow created (up to
    10 s on a busy machine) for nothing."""
    if _stopped_by:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + _stopped_by[0])


def die_with_parent() -> None:
    """`preexec_fn` of a child process (runs between fork and exec): the kernel sends it SIGTERM when the thread
    that started it ends, which is when this process ends if the main thread started it (Linux; elsewhere
    nothing)."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def served_until_stopped(stop: Callable[[], None]) -> Iterator[list[int]]:
    """While a server runs in the block: SIGINT, SIGTERM and SIGHUP call `stop()` (its clean shutdown) and are
    noted, in order, in the yielded list; an inherited SIGINT-ignore is overridden, an inherited SIGHUP-ignore
    (nohup) kept (the module docstring). The handlers found are put back after the block. A server library that
    puts its own handlers in place while it runs (uvicorn does for SIGINT and SIGTERM) and raises the signal again
    once it has shut down reaches these then, so the signal is still noted."""
    received: list[int] = []

    def handler(signum: int, _frame) -> None:
        if signum not in received:  # uvicorn's raising it again after its own shutdown is the same stop
            received.append(signum)
            stop()

    wanted = [s for s in SERVER_STOPS if not (s == signal.SIGHUP and signal.getsignal(s) is signal.SIG_IGN)]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield received
    finally:
        for s, found in previous.items():
            signal.signal(s, found)


def stopped_line(received: list[int]) -> str:
    """What a server prints on stderr when it has stopped: `stopped (SIGINT)`, or `stopped (server ended)`."""
    return f"stopped ({', '.join(signal.Signals(s).name for s in received) or 'server ended'})"
