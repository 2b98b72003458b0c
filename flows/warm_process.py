"""The warm process itself (flows/warm.py says what it is for): `python -m flows.warm_process FOLDER ...`.

It owns FOLDER (a lock held for its life): `socket`, where commands reach it, `log`, its Prefect API's log, and
`preload`, the modules its forks loaded that it did not have (read at the next start). One thread, one loop:

- at start it serves the Prefect API on the port its starter bound (a child that dies with it), so the starter's
  flow runs at once; when the starter has ended (the pipe it was given closes), or a command asks, it loads:
  flows/warm_load.py's list (every trainflow module, and with them torch, Prefect, MLflow and the rest; the
  modules in `preload`; MLflow's map of installed packages, the first export); then it drops trainflow's own
  modules, so that each fork imports the code as it is on disk then, and freezes what is left out of the garbage
  collector's way;
- `run`: checks the caller's fingerprint, forks (the fork becomes the command's process, or a worker's flow run's:
  flows/warm_fork.py), and answers with the fork's pid, then its exit code (128 + N when a signal N ended it); a
  caller that goes away before its fork has ended is its SIGTERM; a refusal is a line in `log`;
- `api` (a command running in its own process uses the API; open connections count as work), `status`,
  `retire` (stop taking commands; end once the forks have), `stop` (`trainflow down`: that project's forks get
  SIGTERM; another project's, where TRAINFLOW_WARM_DIR is shared, run to their end, then it ends).

It ends after TRAINFLOW_WARM_MINUTES without a command, connection or fork, when FOLDER is removed or replaced,
on `stop`, and on SIGTERM, SIGINT or SIGHUP. Forks must start with no other Python thread in this process: none
is ever started here, and loading stops if one appears. Libraries' native threads are not checked: once loaded it
holds two, the OpenBLAS pools of numpy and SciPy, which stop themselves at a fork (pthread_atfork); pyarrow's
jemalloc is told to start none. A fork once died of SIGSEGV in the suite while jemalloc's was there
(docs/benchmarks.md section 10), not explained.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from flows import local_api, warm, warm_fork, warm_load, warm_socket
from tasks import settings

OURS = warm.OURS
START_DELAY = 30.0  # seconds after which it loads even if its starter has not ended (a long first command)
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Fork:
    pid: int
    conn: socket.socket  # to the command that asked for it (the process the user started)
    home: str = ""  # that command's project (its .trainflow folder): `trainflow down` there stops it
    told: bool = False  # SIGTERM sent because that command went away


@dataclass
class Warm:
    where: Path
    command: str
    api: local_api.API | None
    starter: int | None  # read end of the pipe the starter holds; None once it has ended
    minutes: float
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)  # the last time anything happened
    loaded: bool = False
    retired: bool = False
    stopping: bool = False
    forks: dict[int, Fork] = field(default_factory=dict)
    held: list[socket.socket] = field(default_factory=list)  # `api` connections of commands in their own process
    before: frozenset[str] = frozenset()  # modules loaded when the forks start (what theirs are compared with)
    fingerprint: str = ""
    listener: socket.socket | None = None
    lock: int = -1  # the folder's lock, held for life
    wake: int = -1  # SIGCHLD's wake-up pipe
    identity: tuple[int, int] | None = None  # the socket file this process bound


    # -- the loop ------------------------------------------------------------------------------------------------

    def serve(self) -> None:
        listener, wake, identity = self.listener, self.wake, self.identity
        while not self._done():
            watched = [wake, *([listener] if not self.retired else []), *([self.starter] if self.starter else []),
                       *(f.conn for f in self.forks.values()), *self.held]
            ready, _, _ = select.select(watched, [], [], 1.0)
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)
            self._reap()
            if self.starter is not None and self.starter in ready:
                if not os.read(self.starter, 1):
                    os.close(self.starter)
                    self.starter = None
                    self.last = time.monotonic()
            for fork in [f for f in self.forks.values() if f.conn in ready]:
                self._client_went(fork)
            for conn in [c for c in self.held if c in ready]:
                if not warm_socket.peek(conn):
                    self.held.remove(conn)
                    conn.close()
                    self.last = time.monotonic()
            if listener in ready and not self.retired:
                self._accept(listener)
            if not self.loaded and (self.starter is None or time.monotonic() - self.started > START_DELAY):
                self.load()
            if self.api is not None and self.api.process.poll() is not None and not self.stopping:
                print(f"its Prefect API ended (exit code {self.api.process.returncode}; its log: {self.api.log}): "
                      "stopping", file=sys.stderr, flush=True)
                self.stop()
            if not self.retired and _identity(self.where) != identity:
                print("its folder was removed or replaced: retiring", file=sys.stderr, flush=True)
                self.retire()

    def _done(self) -> bool:
        if self.stopping:  # the forks were told to stop; a command holding the API or the starter is not waited for
            return not self.forks
        busy = bool(self.forks or self.held or self.starter is not None)
        if self.retired:
            return not busy
        return not busy and time.monotonic() - self.last > self.minutes * 60

    def _reap(self) -> None:
        for pid in list(self.forks):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            fork = self.forks.pop(pid)
            code = os.waitstatus_to_exitcode(status)  # -N: signal N ended it
            with contextlib.suppress(OSError):
                warm_socket.send(fork.conn, {"exit": code if code >= 0 else 128 - code, "signal": max(0, -code)})
            fork.conn.close()
            self.last = time.monotonic()
            self._learn(pid)

    def _client_went(self, fork: Fork) -> None:
        """A command's process closed its connection: killed, most likely. Its fork stops as if by SIGTERM."""
        if warm_socket.peek(fork.conn) or fork.told:
            return
        fork.told = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(fork.pid, signal.SIGTERM)

    # -- requests ------------------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        self.last = time.monotonic()
        try:
            conn.settimeout(10)
            if warm_socket.peer_uid(conn) != os.getuid():
                raise OSError("another user")
            data, fds, _, _ = socket.recv_fds(conn, 1, 3)
            lines = warm_socket.Lines(conn)
            lines.buffer = data
            request = lines.next()
            conn.settimeout(None)
        except (OSError, ValueError):
            conn.close()
            return
        if request is None:
            conn.close()
            return
        op = request.get("op")
        try:
            if op == "run":
                self._run(conn, request, fds)
                return  # the connection is the fork's now (or closed)
            if op == "api" and self.api is not None and not self.retired:
                warm_socket.send(conn, {"api": self.api.url})
                self.held.append(conn)
                return
            warm_socket.send(conn, self._answer(request))
        except OSError:
            pass
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        conn.close()

    def _answer(self, request: warm_socket.Message) -> warm_socket.Message:
        if request.get("op") == "retire":
            self.retire()
        elif request.get("op") == "stop":
            self.stop(request.get("home"))
        return {"pid": os.getpid(), "api": self.api.url if self.api else None, "ready": self.loaded,
                "retired": self.retired, "stopping": self.stopping, "forks": len(self.forks), "minutes": self.minutes,
                "idle_seconds": round(time.monotonic() - self.last, 1), "fingerprint": self.fingerprint,
                "folder": str(self.where)}

    def _run(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        loading = request.get("engine") and not self.loaded  # a worker's flow run does not wait: it runs in its own
        if self.retired or self.stopping or loading or request.get("fingerprint") != self.fingerprint or len(fds) != 3:
            why = ("retired" if self.retired else "stopping" if self.stopping else "loading" if loading else
                   f"fingerprint {request.get('fingerprint')}, not this one's" if len(fds) == 3 else "no streams")
            print(f"refused a command ({why}): it runs in its own process", file=sys.stderr, flush=True)
            warm_socket.send(conn, {"refused": why})
            conn.close()
            return
        if not self.loaded:
            self.load()
        pid = os.fork()
        if pid == 0:  # never returns
            warm_fork.become(self, request, fds, conn)
        self.forks[pid] = Fork(pid, conn, request.get("home", ""))
        print(f"fork {pid}: " + (f"flow run {request['env'].get('PREFECT__FLOW_RUN_ID')}" if request.get("engine") else
              f"trainflow {warm.command_name(request['argv'])}"), file=sys.stderr, flush=True)  # no arguments: secrets
        warm_socket.send(conn, {"pid": pid})

    def retire(self) -> None:
        """Take no more commands; give the folder up now (the next warm process may start), end once the forks and
        the commands holding the API have."""
        if self.retired:
            return
        self.retired = True
        if _identity(self.where) == self.identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.where / "socket")
        self.listener.close()
        os.close(self.lock)

    def stop(self, home: str | None = None) -> None:
        """SIGTERM to the forks of project `home` (None: every fork); then, with no other project's fork left, end
        once they have ended, else take no more commands and end once the others' have too (a shared
        TRAINFLOW_WARM_DIR: `trainflow down` in one project does not stop another's commands)."""
        told = [fork for fork in self.forks.values() if home is None or fork.home == home]
        for fork in told:
            with contextlib.suppress(ProcessLookupError):
                os.kill(fork.pid, signal.SIGTERM)
        if len(told) == len(self.forks):
            self.stopping = True
        else:
            self.retire()

    # -- loading -------------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Import what every command imports, then forget trainflow's own modules (see the module docstring). A stop
        signal meanwhile ends the process at once: there is no fork yet, and loading takes seconds."""
        started = time.monotonic()
        handlers = {s: signal.signal(s, _end_now) for s in STOPS}
        os.environ.update(warm_load.WHILE_LOADING | settings.STARTED_WITH)  # a user's own settings are kept
        try:
            for name in [*warm_load.our_modules(), *warm_load.listed(self.where / "preload")]:
                self._import(name)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        for name in [m for m in sys.modules if m.split(".")[0] in OURS]:
            del sys.modules[name]
        os.environ.clear()
        os.environ.update(settings.STARTED_WITH)
        warm_load.first_uses()
        gc.collect()
        gc.freeze()  # the forks' collections then skip everything loaded here
        self.before = frozenset(sys.modules)
        self.loaded = True
        print(f"loaded {len(sys.modules)} modules in {time.monotonic() - started:.1f} s ("
              f"{len(os.listdir('/proc/self/task'))} threads, the libraries' own)", file=sys.stderr, flush=True)

    def _import(self, name: str) -> None:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - one module that does not load is one module fewer
            print(f"not loaded: {name} ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
        if threading.active_count() > 1:
            raise SystemExit(f"loading {name} started a thread: a fork would not be safe; ending")

    def _learn(self, pid: int) -> None:
        """Add the modules fork `pid` loaded beyond these to `preload`, and load them (when idle)."""
        path = self.where / "learned" / str(pid)
        new = warm_load.listed(path)
        path.unlink(missing_ok=True)
        if not new or not self.loaded:
            return
        known = warm_load.listed(self.where / "preload")
        (self.where / "preload").write_text("".join(f"{m}\n" for m in sorted({*known, *new})))
        for name in new:
            if name not in sys.modules:
                self._import(name)
        gc.freeze()
        self.before = frozenset(sys.modules)


def _end_now(signum: int, _frame) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name} while loading")


def _identity(where: Path) -> tuple[int, int] | None:
    with contextlib.suppress(OSError):
        st = os.stat(where / "socket")
        return st.st_dev, st.st_ino
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.warm_process")
    p.add_argument("folder")
    p.add_argument("--command", default=warm.COMMAND)
    p.add_argument("--api-fd", type=int)
    p.add_argument("--starter-fd", type=int)
    args = p.parse_args(argv)
    where = Path(args.folder)
    os.chdir(where)
    api = None
    if args.api_fd is not None:  # first: its starter is waiting for it
        api = local_api.serve_api(args.api_fd, where / "prefect-api.log")
    lock = os.open("lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another warm process owns the folder: serve the starter's API until it has ended
        print(f"{where} has a warm process already: serving this one's starter's Prefect API until it ends",
              file=sys.stderr, flush=True)
        while args.starter_fd is not None and os.read(args.starter_fd, 1):
            pass
        if api:
            api.stop()
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink("socket")  # left by a warm process that was killed
    mask = os.umask(0o077)  # the socket: this user's only (and each connection's peer is checked)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("socket")
    os.umask(mask)
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)  # a SIGCHLD wakes the loop
    signal.signal(signal.SIGCHLD, lambda *_: None)
    server = Warm(where, args.command, api, args.starter_fd, warm.minutes(settings.STARTED_WITH),
                  fingerprint=warm.fingerprint(settings.STARTED_WITH, warm.search_path()), listener=listener,
                  lock=lock, wake=wake_read, identity=_identity(where))
    for s in STOPS:
        signal.signal(s, lambda *_: server.stop())  # ends the loop once the forks have ended
    (where / "state").write_text(json.dumps({"pid": os.getpid(), "api": api.url if api else None}))
    print(f"warm process {os.getpid()} for {settings.HOME.parent}: Prefect API {api.url if api else '-'}, ends "
          f"after {server.minutes:g} idle minutes", file=sys.stderr, flush=True)
    if server.fingerprint != where.name:  # its starter's environment or module path differed from its own
        print(f"its fingerprint is {server.fingerprint}, not its folder's: commands that chose this folder will run in "
              f"their own processes (its: {warm.fingerprinted(settings.STARTED_WITH, warm.search_path())})",
              file=sys.stderr, flush=True)
    try:
        server.serve()
        why = "ended"
    except SystemExit as exc:
        why = f"ended: {exc}"
    except BaseException:  # noqa: BLE001 - said in its log, and the API still stopped
        traceback.print_exc()
        why = "ended by the error above"
    if not server.retired:
        server.retire()
    if api:
        api.stop()
    print(why, file=sys.stderr, flush=True)
    os._exit(0)  # not the interpreter's collection over everything loaded: seconds for nothing


if __name__ == "__main__":
    main()
