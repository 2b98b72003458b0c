"""Local-by-default settings, applied before prefect or mlflow is imported.

One store per project: everything lives under the project's `.trainflow/` (Prefect home and its
database, MLflow SQLite store and artifacts, run workspaces, stage caches), found the way git finds
its root (`find_home`). While the project's stack (`trainflow up`) is running, commands use its
servers, which serve these same stores. `PREFECT_API_URL` and `MLFLOW_TRACKING_URI`, when set, are
used unchanged. Nothing here creates a folder: a command creates what it writes when it starts work.
A server of the stack that stops answering mid-command is one line (`unreachable`), said in seconds; so is a disk
that fills up under the store (`disk_full`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_MARKERS = (".trainflow", ".git")  # what makes a folder a project's root, the first one first


def find_home(start: Path | None = None) -> Path:
    """The project's `.trainflow/` folder: $TRAINFLOW_HOME if set; else, walking up from `start` (the current
    directory), the first folder holding `.trainflow/` or `.git` (a repository is a project: a stray
    `.trainflow/` above it, say in the home folder, does not capture it); else `start` itself."""
    if os.environ.get("TRAINFLOW_HOME"):
        return Path(os.environ["TRAINFLOW_HOME"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder / ".trainflow"
    return here / ".trainflow"


STARTED_WITH = dict(os.environ)  # this process's environment before apply_defaults (what a warm process's fork gets)
HOME = find_home()
STACK = HOME / "stack"  # `trainflow up`: the servers' pid files, logs and the env file naming their URLs

OFFLINE = {  # this tool must work without internet: no telemetry, no pip checks at model logging
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
}


def running_stack() -> dict[str, str]:
    """The variables of the env file `trainflow up` wrote, if every server it names is still running (its pid
    file's process is alive); {} when the stack is down or its files are stale. Reads files only: commands
    check that the servers answer before they start (flows/local_api.py `ready`)."""
    try:
        env = dict(line.removeprefix("export ").split("=", 1) for line in (STACK / "env").read_text().splitlines()
                   if "=" in line)
        for name in ("prefect", "mlflow"):  # deployments/stack.py's servers
            os.kill(int((STACK / f"{name}.pid").read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return {}
    return env


using_stack = False  # whether apply_defaults pointed this process at the project's running stack


def apply_defaults() -> None:
    """Set the offline switches and the project's stores, leaving anything the user set untouched: the running
    stack's servers when neither server variable is set, else the local stores."""
    global using_stack
    if not (os.environ.get("PREFECT_API_URL") or os.environ.get("MLFLOW_TRACKING_URI")):
        stack = running_stack()
        os.environ.update(stack)
        using_stack = bool(stack)
    for key, value in {
        **OFFLINE,
        "PREFECT_HOME": str(HOME / "prefect"),
        # how long the temporary (ephemeral) Prefect API may take to start: 4-8 s here, more on a new database
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_TRACKING_URI": local_tracking_uri(),
        "MPLBACKEND": "Agg",  # plots are files; no display
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # downloads of a few small files: bars are noise
        # a server that goes away mid-run fails the run in seconds (unreachable, below, words it), not after
        # MLflow's default 7 retries with doubling back-off and 120 s timeouts, or Prefect's 5 (2 + 4 + ... 32 s)
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # waits 0, 2, 4 s
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
        "PREFECT_CLIENT_MAX_RETRIES": "3",
        # Prefect's cache records live beside the cached outputs they point to
        "PREFECT_LOCAL_STORAGE_PATH": str(HOME / "cache" / "results"),
    }.items():
        os.environ.setdefault(key, value)


def local_tracking_uri() -> str:
    return f"sqlite:///{HOME / 'mlflow.db'}"


def local_artifact_root() -> Path:
    return HOME / "mlartifacts"


def prefect_home() -> Path:
    """Prefect's home, whose prefect.db the temporary APIs and the stack's Prefect server share: the user's
    PREFECT_HOME if set (as for every Prefect tool), else the project's."""
    return Path(os.environ.get("PREFECT_HOME") or HOME / "prefect")


def workspace(flow_run_id: str) -> Path:
    """Per-run folder for files the tasks hand to each other (checkpoints, models, plots)."""
    path = HOME / "runs" / flow_run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_generation() -> str:
    """A token created with the cache folder: wiping the folder changes every key, so no cache
    record can outlive the files it points to."""
    marker = HOME / "cache" / "generation"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(uuid.uuid4().hex)
    return marker.read_text()


CACHE_FORMAT = 3  # raised when what a cached stage returns changes shape (2: typed references, tasks/chain/refs.py; 3:
# dataset files name streamed images as an array and may point into a pack of decoded images)


def stage_key(stage: str, *parts) -> str:
    """Cache key of a stage: its name, the inputs' digests and its config slice."""
    text = json.dumps([stage, CACHE_FORMAT, _cache_generation(), *parts], sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def stage_dir(key: str) -> Path:
    """Where a cached stage keeps its outputs (content-addressed, shared across runs)."""
    path = HOME / "cache" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


class _NoInputErrorTracebacks(logging.Filter):
    """Bad input (a TrainflowError) and a training that failed as such (a TrainingError: a diverging loss, too
    few members) are reported by their message alone: drop the traceback that Prefect attaches to task- and
    flow-run failure logs. The log line itself stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        from trainlib.errors import TrainflowError, TrainingError

        if record.exc_info and isinstance(record.exc_info[1], (TrainflowError, TrainingError)):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_input_errors() -> None:
    if os.environ.get("TRAINFLOW_DEBUG"):
        return
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoInputErrorTracebacks) for f in logger.filters):
            logger.addFilter(_NoInputErrorTracebacks())


INPUT_ERRORS = re.compile(r"\b(TrainflowError|ConfigError|DataError)\b")
# what the HTTP clients (requests/urllib3 for MLflow, httpx for Prefect) say when nothing answers at an address
NO_ANSWER = re.compile(r"Connection refused|Failed to establish a new connection|Max retries exceeded|"
                       r"Connection reset|RemoteDisconnected|All connection attempts failed|Server disconnected")
# what the OS, SQLite and Prefect say when a write finds the disk full
FULL = re.compile(r"No space left on device|database or disk is full|\[Errno 28\]|Disk quota exceeded")
FULL_BELOW = 1 << 20  # bytes free under which a failure is put down to the full disk (torch.save then says only
# "unexpected pos", a Prefect API whose database is full only "500 Internal Server Error")
# the consoles' noise while a server is gone: urllib3's retries, Prefect's events worker trying each queued event
RETRYING = re.compile(r"^Retrying \(|Unable to connect to 'ws|Service 'EventsWorker' failed to process")


class ServerGone(ConnectionError):
    """A server of the stack stopped answering while a command used it (the message says which and what to do)."""


def gone(name: str, url: str) -> str:
    return (f"the {name} server at {url} stopped answering while this command used it: `trainflow status` shows the "
            "stack's servers, `trainflow up` starts the stopped one again; then run the command again")


def _said(exc: BaseException | None) -> str:
    """An exception and those it came from, as text."""
    chain = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return " | ".join(f"{type(e).__module__}.{type(e).__name__}: {e}" for e in chain)


def disk_full(exc: BaseException | None = None) -> str | None:
    """The one line for a failure that a full disk under the project's store caused (the failure says so, or the
    disk has less than FULL_BELOW free now); None otherwise."""
    where = next((p for p in (HOME, *HOME.parents) if p.exists()), Path("/"))
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return None
    if free >= FULL_BELOW and not FULL.search(_said(exc)):
        return None
    return (f"the disk holding {HOME} is full ({free / 2**20:.1f} MiB free): free some space, then run the command "
            "again (`trainflow cache --prune` drops the stage cache)")


def unreachable(exc: BaseException) -> str | None:
    """The one line for a command that failed because its MLflow or Prefect server (an http address) stopped
    answering; None for any other failure."""
    if isinstance(exc, ServerGone):
        return str(exc)
    return _gone_in(_said(exc))


def _gone_in(said: str) -> str | None:
    """unreachable's line when `said` (an error as text) is a client finding no answer at the MLflow or Prefect
    server's address."""
    if not NO_ANSWER.search(said):
        return None
    for name, url in (("MLflow", os.environ.get("MLFLOW_TRACKING_URI", "")),
                      ("Prefect", os.environ.get("PREFECT_API_URL", ""))):
        where = urlsplit(url)
        if where.scheme in ("http", "https") and (where.netloc in said or (name == "Prefect" and "httpx" in said)):
            return gone(name, url)
    return None


class _SaidByTheCLI(logging.Filter):
    """Console only: a run's error lines about bad input, or about a server that stopped answering, repeat what the
    CLI prints once at the end (they still reach the Prefect API, the UI's run logs, when it answers); the clients'
    retries meanwhile are dropped too."""

    def filter(self, record: logging.LogRecord) -> bool:
        from trainlib.errors import TrainflowError

        message = record.getMessage()
        if RETRYING.search(message) or (record.name.startswith("mlflow.store") and FULL.search(message)):
            return False  # (MLflow's store logs the database error it then raises, with its traceback)
        if not record.name.startswith(("prefect.task_runs", "prefect.flow_runs")):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if FULL.search(message) or _gone_in(message) or "ServerGone" in message or (exc and unreachable(exc)):
            return False  # the run's lines about it, a result Prefect could not write on a full disk included
        if record.levelno < logging.ERROR:
            return True
        if disk_full(exc):  # what a full disk made fail says so only sometimes (torch.save: "unexpected pos")
            return False
        return not (isinstance(exc, TrainflowError) or INPUT_ERRORS.search(message))


def one_message_for_input_errors() -> None:
    """For the CLI (which prints bad input as one `error:` line): keep Prefect's console handlers from
    printing the same problem three more times."""
    if os.environ.get("TRAINFLOW_DEBUG"):
        return
    logging.raiseExceptions = False  # a handler that cannot write (Prefect's to its API, gone) says nothing on stderr
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for handler in {h for logger in loggers for h in getattr(logger, "handlers", ())}:  # Prefect's have their own
        if not any(isinstance(f, _SaidByTheCLI) for f in handler.filters):
            handler.addFilter(_SaidByTheCLI())
