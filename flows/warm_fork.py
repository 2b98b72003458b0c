"""A fork of the warm process (flows/warm_process.py) becoming the command's process: the command's streams, CPUs,
folder, environment, module path and signal dispositions, then the command itself (`cli.main`'s `run`, or
for a worker's flow run flows/engine.py's Prefect engine), then the exit a process of its own would make. It notes
the modules it loaded that the warm process had not, for the warm process to load before its next fork
(`learned/<pid>`)."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import socket
import sys
import threading
import traceback
from typing import TYPE_CHECKING

from flows import local_api, processes, warm

if TYPE_CHECKING:
    from flows.warm_process import Warm


def become(server: Warm, request: dict, fds: list[int], conn: socket.socket) -> None:
    """In a fork: become the command's process (its streams, CPUs, folder, environment, module path and signal
    dispositions), run the command, exit with its code. Never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        starter = [server.starter] if server.starter is not None else []
        for fd in [server.listener.fileno(), server.wake, server.lock, conn.fileno(), *starter,
                   *(f.conn.fileno() for f in server.forks.values()), *(c.fileno() for c in server.held)]:
            with contextlib.suppress(OSError):
                os.close(fd)
        processes.die_with_parent()  # the warm process gone (and its API with it): stop as if by SIGTERM
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _streams()
        if request.get("cpus") and hasattr(os, "sched_setaffinity"):  # the command's CPUs, not the warm process's
            os.sched_setaffinity(0, request["cpus"])
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if server.api is not None:
            os.environ[local_api.FORK_API] = server.api.url
        sys.path[:] = request["path"]
        sys.argv = ["trainflow", *request["argv"]]
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            ignored = s in request["ignored"]
            signal.signal(s, signal.SIG_IGN if ignored else signal.default_int_handler if s == signal.SIGINT
                          else signal.SIG_DFL)
        import tempfile

        tempfile.tempdir = None  # found again from this command's TMPDIR
        try:
            code = _flow_run(request["argv"]) if request.get("engine") else _command(server.command, request["argv"])
        except SystemExit as exc:  # argparse's refusals, a --help; the engine's exits
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        _note_new_modules(server)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # what the interpreter does at exit: threading's exit callbacks (Prefect's workers drain there), then the
        # exit handlers (the command's last one ends the process with its code)
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - whatever happens, this fork must not return into the warm process's loop
        with contextlib.suppress(Exception):
            traceback.print_exc()
            code = 1
    os._exit(code)


def _command(name: str, argv: list[str]) -> int:
    """A `trainflow` command: `name`'s `run(argv)`, its variables applied first."""
    module = importlib.import_module(name)
    os.environ.update(module.environment(argv))
    _mlflow_reads_this_environment()
    return module.run(argv)


def _flow_run(argv: list[str]) -> int:
    """A worker's flow run (flows/engine.py): Prefect's engine, its settings and logging read from this environment."""
    from flows import engine

    local_api.prefect_reads_this_environment()
    _mlflow_reads_this_environment()
    engine.run_here(argv)
    return 0


def _streams() -> None:
    """stdin, stdout and stderr on the command's descriptors (now 0, 1, 2), buffered as Python buffers them."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=encoding,  # noqa: SIM115
                                       errors=errors, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace",  # noqa: SIM115
                                       closefd=False)


def _mlflow_reads_this_environment() -> None:
    """MLflow set its log level when the warm process imported it: again, from this command's environment. (Prefect
    reads its settings again when the command first needs it: flows/local_api.py `start`.)"""
    from mlflow.utils.logging_utils import _configure_mlflow_loggers

    _configure_mlflow_loggers(root_module_name="mlflow")


def _note_new_modules(server: Warm) -> None:
    new = [m for m in sys.modules if m not in server.before and m.split(".")[0] not in warm.OURS and m != "__main__"]
    if new:
        with contextlib.suppress(OSError):
            (server.where / "learned").mkdir(exist_ok=True)
            (server.where / "learned" / str(os.getpid())).write_text("".join(f"{m}\n" for m in new))
