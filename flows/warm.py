"""The project's warm process, seen from a `trainflow` command: forward the command to it, or start it.

A command spends most of its seconds before and after its work: the interpreter, importing torch, Prefect and
MLflow (about 6 s here), a Prefect API starting on the other core (about 4 s), first-use costs. So the first flow
command in a project leaves a warm process behind (flows/warm_process.py, files in `.trainflow/warm/`): it holds
the project's Prefect API, and once that command has ended it loads the libraries every command uses. Later
commands (FORWARDED), and a worker's flow runs (flows/engine.py), run as forks of it: this process sends its
arguments, working folder, environment, CPUs and its stdin, stdout and stderr over a Unix socket
(flows/warm_socket.py), passes on the signals it gets, and exits with the fork's exit code,
so a terminal, a pipe, `--json`, Ctrl+C and exit codes behave as if the command ran here. The fork imports
trainflow's own modules afresh, so an edited file counts at once.

What a warm process loaded depends on the interpreter, the installed packages and a few variables read while the
libraries load (FINGERPRINTED): commands whose fingerprints differ (another PYTHONPATH, an upgraded package, a shell
with OMP_NUM_THREADS set) use warm processes of their own, one per fingerprint (`.trainflow/warm/<fingerprint>/`),
so two kinds of shell never undo each other's. Each ends after TRAINFLOW_WARM_MINUTES (default 15) without a
command, with `trainflow down`, or when its folder is removed. TRAINFLOW_WARM_MINUTES=0: no warm process; each
command starts a temporary Prefect API of its own (flows/local_api.py) that ends with it. TRAINFLOW_WARM_DIR puts
the warm processes' folders elsewhere, shared by several projects (the test suite does): there `trainflow down`
stops this project's forks, and another project's run to their end.

Nothing here imports more than the standard library and tasks/settings.py: it runs first in every command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flows.warm_socket import Lines, Message, connect, send
from tasks import settings

MINUTES = "TRAINFLOW_WARM_MINUTES"
DIR = "TRAINFLOW_WARM_DIR"
DEFAULT_MINUTES = 15.0
COMMAND = "cli.main"  # the module whose `run(argv)` a fork runs, and whose `environment(argv)` it applies
FORWARDED = frozenset({"run", "tune", "compare", "ensemble", "transfer", "lr-find", "study", "variance", "rerun",
                       "predict", "models", "card", "promote", "rollback"})  # not servers, up/down/status, config, help
# Variables read while the libraries load (so a fork could not change them) or that decide what loads. The rest of
# the environment is the fork's own: Prefect's settings and logging are read again in it, MLflow reads its
# variables when used, and trainflow's own modules are imported there afresh.
FINGERPRINTED = ("PYTHON", "LD_", "TORCH", "PYTORCH", "CUDA", "NVIDIA", "OMP_", "MKL_", "KMP_", "ONEDNN_", "DNNL_",
                 "ATEN_", "OPENBLAS", "JE_", "MPL", "MATPLOTLIB", "LANG", "LC_", "TZ", "TMPDIR", "MALLOC_",
                 "PREFECT_PLUGINS", "PREFECT_PROFILES_PATH", "VIRTUAL_ENV")
NOT_FINGERPRINTED = frozenset({"TORCH_HOME"})  # read when used
OURS = ("trainlib", "tasks", "flows", "deployments", "cli")  # this project's packages: imported afresh by every fork
SOURCE = os.path.realpath(Path(__file__).parent.parent)  # the folder that holds them
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # passed on to the fork as they arrive
ANSWER_SECONDS = 300  # the longest a command waits for the warm process to take it (it may be loading: ~10 s)


def minutes(env: dict[str, str] | None = None) -> float:
    """How long the warm process waits for a command before it ends; 0: no warm process."""
    text = (env if env is not None else os.environ).get(MINUTES, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_MINUTES
    except ValueError:
        return DEFAULT_MINUTES


def base(env: dict[str, str] | None = None) -> Path:
    """Where the warm processes' folders are: TRAINFLOW_WARM_DIR, or the project's `.trainflow/warm`."""
    chosen = (env if env is not None else os.environ).get(DIR)
    return Path(chosen).resolve() if chosen else settings.HOME / "warm"


def folder(env: dict[str, str] | None = None) -> Path:
    """The folder of the warm process this process would use (its fingerprint's): socket, lock, logs, and what it
    learned to load."""
    env = env if env is not None else settings.STARTED_WITH
    return base(env) / fingerprint(env, search_path())


def folders(env: dict[str, str] | None = None) -> list[Path]:
    """Every warm process folder of the project (one per fingerprint), running or not."""
    root = base(env)
    return sorted(p for p in root.iterdir() if (p / "lock").exists()) if root.is_dir() else []


def fingerprint(env: dict[str, str], path: list[str]) -> str:
    """What a warm process loaded with: the interpreter, where modules come from (and when those folders last
    changed: an install or an upgrade changes them) and the variables read while loading. A folder holding this
    project's own packages is not timed: every fork imports them afresh, and a file added beside them (a test's
    `.hypothesis/`, a user's notes) is no reason for another warm process."""
    return hashlib.sha256("\0".join(fingerprinted(env, path)).encode()).hexdigest()[:16]


def fingerprinted(env: dict[str, str], path: list[str]) -> list[str]:
    """What `fingerprint` hashes."""
    parts = [sys.executable, sys.version, *path]
    for entry in path:
        if os.path.realpath(entry or ".") == SOURCE:
            continue
        with contextlib.suppress(OSError):
            parts.append(f"{entry}@{os.stat(entry or '.').st_mtime_ns}")
    return parts + sorted(f"{k}={v}" for k, v in env.items()
                          if k.startswith(FINGERPRINTED) and k not in NOT_FINGERPRINTED)


def search_path() -> list[str]:
    """This process's module search path, without its first entry (the script's folder, or the current one under
    `python -m`): a fork is given this process's whole path, so only the rest must match."""
    return sys.path[1:]


def ask(message: Message, where: Path, timeout: float = 5.0) -> Message | None:
    """One question to the warm process -> its answer, or None when none runs (or it went away)."""
    try:
        with connect(where, timeout) as sock:
            send(sock, message)
            return Lines(sock).next()
    except (OSError, ValueError):
        return None


def command_name(argv: list[str]) -> str | None:
    """The subcommand of a `trainflow` command line (after `--debug`, the one option before it)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
        if arg != "--debug":
            return None  # --help, or an option argparse will refuse: not worth a fork
    return None


def forward(argv: list[str]) -> int | None:
    """Run this command as a fork of the project's warm process -> its exit code; None when it must run here: the
    command is not one to forward, there is no warm process, or it is stopping."""
    if command_name(argv) not in FORWARDED or any(a in ("-h", "--help") for a in argv):
        return None
    return _forward({"argv": argv}, ANSWER_SECONDS)


def forward_flow_run(argv: list[str]) -> int | None:
    """Run a worker's flow run (flows/engine.py) as a fork of the project's warm process if one is ready for this
    environment -> its exit code; None when the flow run must run here (none ready: one loading refuses it)."""
    return _forward({"argv": argv, "engine": True}, 10.0)


def _forward(request: Message, timeout: float) -> int | None:
    env = settings.STARTED_WITH
    if not minutes(env):
        return None
    mine = fingerprint(env, search_path())
    relay = _Relay()
    try:
        with connect(base(env) / mine, timeout=timeout) as sock:
            send(sock, {"op": "run", **request, "cwd": os.getcwd(), "env": env, "path": sys.path, "cpus": _cpus(),
                        "home": str(settings.HOME), "fingerprint": mine, "umask": _umask(), "ignored": relay.ignored},
                 fds=[0, 1, 2])
            lines = Lines(sock)
            answer = lines.next()
            if answer is not None and "pid" in answer:
                relay.to(answer["pid"])
                return _wait(lines, answer["pid"])
    except (OSError, ValueError):
        pass  # nothing listens (no warm process, or a stale socket), or it did not answer in time
    finally:
        relay.restore()
    # refused (it is stopping), or gone before starting a fork: the command runs here, unless it was stopped already
    return 128 + relay.pending[0] if relay.pending else None


class _Relay:
    """This process's SIGINT, SIGTERM and SIGHUP, passed on to the fork; those that come before its pid is known
    are kept and passed on then. A signal this process ignores (nohup's SIGHUP) the fork ignores too."""

    def __init__(self):
        self.pid: int | None = None
        self.pending: list[int] = []
        self.ignored = [s for s in SIGNALS if signal.getsignal(s) is signal.SIG_IGN]
        self.previous = {s: signal.signal(s, self) for s in SIGNALS if s not in self.ignored}

    def __call__(self, signum, _frame) -> None:
        if self.pid is None:
            self.pending.append(signum)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def to(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            self(signum, None)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _wait(lines: Lines, pid: int) -> int:
    """Until the warm process says how the fork `pid` ended -> its exit code (128 + N if signal N ended it)."""
    lines.sock.settimeout(None)
    try:
        answer = lines.next()
    except OSError:
        answer = None
    if answer is None or "exit" not in answer:  # the warm process died under it: the fork stops too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        print("failed: the project's warm process ended while running this command (its log: "
              f"{folder(settings.STARTED_WITH) / 'log'})", file=sys.stderr)
        return 1
    if answer.get("signal"):  # what a shell says of a process a signal killed (the OOM killer's SIGKILL, say)
        print(f"failed: the command's process was killed by {signal.Signals(answer['signal']).name}",
              file=sys.stderr)
    return int(answer["exit"])


def _cpus() -> list[int] | None:
    """The CPUs this process may run on (`taskset`, a container's cpuset): its fork runs on them too."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def api() -> tuple[str, subprocess.Popen | None] | None:
    """For a command running in this process: the Prefect API of the project's warm process, which this command
    starts if there is none (the warm process then loads the libraries once this process has ended) -> its URL, and
    the warm process when started here. None when TRAINFLOW_WARM_MINUTES is 0. The warm process counts this command
    as work while it runs."""
    env = settings.STARTED_WITH
    if not minutes(env):
        return None
    where = folder(env)
    url = _adopt(where)
    return (url, None) if url else start(where, env)


_held: list = []  # what tells the warm process this command still works: its `api` connection, or its starter pipe


def _adopt(where: Path) -> str | None:
    """The warm process's API, held (the connection stays open until this process ends) -> its URL."""
    try:
        sock = connect(where)
        send(sock, {"op": "api"})
        answer = Lines(sock).next()
    except (OSError, ValueError):
        return None
    if not answer or not answer.get("api"):
        sock.close()
        return None
    _held.append(sock)
    return answer["api"]


def start(where: Path, env: dict[str, str], starter: bool = True) -> tuple[str, subprocess.Popen]:
    """Start the warm process in `where` with a Prefect API on a port bound here (so its URL is known at once) ->
    the URL and the process. With `starter`, this process is its starter: it loads once this process has ended (it
    learns of that when the pipe it is given closes); without, at once."""
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    alive, keep = os.pipe() if starter else (None, None)  # the warm process reads EOF from `alive` at our end
    fds = [sock.fileno(), *([alive] if starter else [])]
    with sock, open(where / "log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.warm_process", str(where), "--command", COMMAND,
             "--api-fd", str(sock.fileno()), *(["--starter-fd", str(alive)] if starter else [])],
            pass_fds=fds, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=where,  # `-m` puts it first in its
            env=env | {"TRAINFLOW_HOME": str(settings.HOME)}, start_new_session=True)  # path: where always exists
    if starter:
        os.close(alive)
        _held.append(keep)  # not inherited by this process's children: only its own end closes it
    return f"http://127.0.0.1:{port}/api", process


@dataclass(frozen=True)
class State:
    """One of the project's warm processes, as `trainflow status` shows it."""

    pid: int
    api: str | None  # its Prefect API's URL
    ready: bool | None  # loaded; False: loading; None: not answering now (loading takes seconds)
    forks: int  # commands running
    minutes: float  # idle minutes it waits before ending
    idle_seconds: float
    folder: Path

    @classmethod
    def of(cls, answer: Message, folder: Path) -> State:
        return cls(int(answer["pid"]), answer.get("api"), answer.get("ready"), int(answer.get("forks", 0)),
                   float(answer.get("minutes", minutes())), float(answer.get("idle_seconds", 0.0)), folder)


def status() -> list[State]:
    """Each of the project's warm processes; one that does not answer now (loading takes seconds) is listed from its
    folder, with ready None."""
    found = []
    for where in folders():
        answer = ask({"op": "status"}, where, timeout=2.0)
        if answer is not None:
            found.append(State.of(answer, where))
        elif (state := _from_files(where)) is not None:
            found.append(state)
    return found


def _from_files(where: Path) -> State | None:
    """A warm process that does not answer, as its folder describes it, if its process is alive."""
    try:
        written = json.loads((where / "state").read_text())
    except (OSError, ValueError):
        return None
    if not _alive(written.get("pid", 0)):
        return None
    return State.of(written | {"ready": None}, where)


def stop(timeout: float = 30.0) -> int:
    """Stop the project's warm processes -> how many were running. This project's forks are told to stop (as by
    SIGTERM); a warm process then ends with its Prefect API, or, where TRAINFLOW_WARM_DIR shares it with another
    project whose commands still run, takes no more commands and ends after them."""
    states, ending = status(), []
    for state in states:
        answer = ask({"op": "stop", "home": str(settings.HOME)}, state.folder, timeout=2.0)
        if answer is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGTERM)  # loading, so not answering: a signal stops it at once
        if answer is None or answer.get("stopping"):
            ending.append(state)
    deadline = time.monotonic() + timeout
    for state in ending:
        while _alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return len(states)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (one that exited but was not reaped yet, a zombie, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
