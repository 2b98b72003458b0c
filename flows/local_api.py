"""A temporary Prefect API for one command, started before the heavy imports so that its start-up
(a few seconds: a uvicorn process importing Prefect's server and opening its database) runs on another
core while this process imports torch, Prefect and MLflow. Configured servers (PREFECT_API_URL,
MLFLOW_TRACKING_URI) are checked instead: one that does not answer fails the command at once.

It is the server Prefect's own ephemeral mode would start (uvicorn on 127.0.0.1, UI off, the ephemeral
settings), only earlier: Prefect starts it when the first client is made, after every import. The socket
is bound here and handed to uvicorn, so no other process can take the port in between. The server stops
when this process exits, also when it is killed. Its log: .trainflow/prefect/temporary-api.log.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from flows.processes import die_with_parent
from trainlib.errors import TrainflowError
from trainlib.redact import redact

EPHEMERAL = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


class TemporaryAPI:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def wait(self, timeout: float) -> None:
        """Block until the API answers its health check; a clear error naming the log if it cannot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TrainflowError(f"the temporary Prefect API exited with code {self.process.returncode} while "
                                     f"starting; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TrainflowError(f"the temporary Prefect API did not answer within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_current: TemporaryAPI | None = None


def current() -> TemporaryAPI | None:
    return _current


def start() -> TemporaryAPI | None:
    """Start the temporary API and point PREFECT_API_URL at it, unless a Prefect API is configured already
    (or Prefect was imported: its settings are fixed then). Call before importing prefect."""
    global _current
    if _current is not None or os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return _current
    from tasks import settings  # the local defaults (PREFECT_HOME under .trainflow); imports nothing heavy

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    log = settings.HOME / "prefect" / "temporary-api.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    site = Path(importlib.util.find_spec("prefect").origin).parent.parent
    with sock, open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory",
             "prefect.server.api.server:create_app", "--fd", str(sock.fileno()), "--log-level", "error",
             "--lifespan", "on"],
            pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **EPHEMERAL}, preexec_fn=die_with_parent)
    _current = TemporaryAPI(process, f"http://127.0.0.1:{port}/api", log)
    atexit.register(_current.stop)
    os.environ["PREFECT_API_URL"] = _current.url
    return _current


def flow_settings() -> contextlib.AbstractContextManager:
    """Prefect settings for the command's flow runs. On the temporary API: no flow-run heartbeats. They tell a
    lasting server that a run's process is alive; this API ends with the process, and the heartbeat thread, which
    sleeps in 1 s steps, held every flow's end up by 0.5-1 s (measured: bench/fanout.py)."""
    if _current is None:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


SERVER_TIMEOUT = 10.0  # seconds a configured server has to answer its health check before anything starts


def check_server(what: str, url: str | None, variable: str) -> None:
    """A configured server that does not answer fails the command now, naming it, instead of after minutes
    of retries mid-run."""
    if not url or not url.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(url)  # without user:password@ (urllib takes it for part of the host name)
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        with urllib.request.urlopen(f"{bare.rstrip('/')}/health", timeout=SERVER_TIMEOUT):
            return
    except urllib.error.HTTPError as exc:
        problem = f"answers HTTP {exc.code} to its health check"
    except (OSError, ValueError) as exc:
        problem = f"does not answer ({getattr(exc, 'reason', exc)})"
    raise TrainflowError(f"the {what} at {redact(url)} {problem}; start it (`trainflow up`) or point {variable} at "
                         "a running one (unset it to work locally)")


def _while_starting() -> None:
    """Work every run does anyway, done while the temporary Prefect API is still starting on another core."""
    import mlflow.pytorch  # noqa: F401  the model logging's imports
    import torch._dynamo  # noqa: F401  the first torch optimizer imports it (about a second)

    from tasks import tracking

    tracking.open_store()


def ready() -> None:
    """Before a flow starts: the MLflow server (if one is configured) answers; the temporary API has started
    (doing work every run needs while it starts), or the configured Prefect API answers."""
    check_server("MLflow tracking server", os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI")
    if _current is not None:
        _while_starting()
        _current.wait(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    else:
        check_server("Prefect API", os.environ.get("PREFECT_API_URL"), "PREFECT_API_URL")

