"""The Prefect API a command's flows run on, when none is configured (PREFECT_API_URL): the project's warm process's
(flows/warm.py), which the command starts if there is none, or with TRAINFLOW_WARM_MINUTES=0 a temporary one of
its own. Either is started before the heavy imports, so that its start-up (a few seconds: a uvicorn process
importing Prefect's server and opening its database) runs on another core while this process imports torch,
Prefect and MLflow. Configured servers (PREFECT_API_URL, MLFLOW_TRACKING_URI) are checked instead: one that does
not answer fails the command at once.

It is the server Prefect's own ephemeral mode would start (uvicorn on 127.0.0.1, UI off, the ephemeral settings,
no scheduler), only earlier: Prefect starts it when the first client is made, after every import. The socket is
bound by the command and handed to uvicorn, so no other process can take the port in between. A temporary API
stops when its command exits, also when it is killed (its log: .trainflow/prefect/temporary-api.log); the warm
process's stops with the warm process (.trainflow/warm/prefect-api.log).
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
FORK_API = "TRAINFLOW_WARM_API"  # set by the warm process in its forks: the API their commands run on


class API:
    """A Prefect API. `process`: the server's process when this process started it (`owned`: stopped here), or the
    warm process that serves it when this command started that one (the API will not come if it ends)."""

    def __init__(self, url: str, kind: str, log: Path, process: subprocess.Popen | None = None, owned: bool = False):
        self.url, self.kind, self.log, self.process, self.owned = url, kind, log, process, owned

    def describe(self) -> str:
        return f"{self.kind} Prefect API {self.url}"

    def wait(self, timeout: float) -> None:
        """Block until the API answers its health check; a clear error naming the log if it cannot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TrainflowError(f"the {self.kind} Prefect API exited with code {self.process.returncode} while "
                                     f"starting; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TrainflowError(f"the {self.kind} Prefect API did not answer within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.owned and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve_api(fd: int, log: Path, kind: str = "warm process's") -> API:
    """Prefect's API on the listening socket `fd` (bound by the caller), in a process that ends with this one's
    thread; the log goes to `log`. The caller closes `fd` when it likes: the server has its own copy."""
    from tasks import settings

    port = socket.socket(fileno=os.dup(fd)).getsockname()[1]
    log.parent.mkdir(parents=True, exist_ok=True)
    settings.prefect_home().mkdir(parents=True, exist_ok=True)  # its database's folder
    site = Path(importlib.util.find_spec("prefect").origin).parent.parent
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory",
             "prefect.server.api.server:create_app", "--fd", str(fd), "--log-level", "error", "--lifespan", "on"],
            pass_fds=[fd], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **EPHEMERAL}, preexec_fn=die_with_parent)
    return API(f"http://127.0.0.1:{port}/api", kind, log, process, owned=True)


_current: API | None = None


def current() -> API | None:
    return _current


def start() -> API | None:
    """The API this command's flows run on, pointed at by PREFECT_API_URL: in a warm process's fork, the warm
    process's; else the project's warm process's, started now if there is none (flows/warm.py); with
    TRAINFLOW_WARM_MINUTES=0 a temporary one. Nothing when a Prefect API is configured. Call before importing prefect
    (outside a fork, Prefect's settings are fixed once it is imported: nothing is started then)."""
    global _current
    if _current is not None:
        return _current
    from flows import warm
    from tasks import settings  # the local defaults (PREFECT_HOME under .trainflow); imports nothing heavy

    fork = os.environ.get(FORK_API)
    if not os.environ.get("PREFECT_API_URL"):
        if fork:
            _current = API(fork, "the project's warm", warm.folder() / "prefect-api.log")
        elif "prefect" in sys.modules:
            return None
        elif found := warm.api():  # with the warm process when this command started it: waiting fails if it ends
            _current = API(found[0], "the project's warm", warm.folder() / "prefect-api.log", found[1])
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            with sock:
                _current = serve_api(sock.fileno(), settings.HOME / "prefect" / "temporary-api.log", "temporary")
            atexit.register(_current.stop)
        os.environ["PREFECT_API_URL"] = _current.url
    if fork:
        settings.prefect_home().mkdir(parents=True, exist_ok=True)  # as Prefect's import would make it
        prefect_reads_this_environment()
    return _current


def prefect_reads_this_environment() -> None:
    """In a warm process's fork, Prefect was imported by the warm process: it reads its settings (the API, its home,
    the log level) and sets up its logging again, from this command's environment, as its import would have."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def flow_settings() -> contextlib.AbstractContextManager:
    """Prefect settings for the command's flow runs. On the temporary or the warm process's API: no flow-run
    heartbeats. They tell a server's services that a run's process is alive; these APIs run none (and the
    temporary one ends with the process), and the heartbeat thread, which sleeps in 1 s steps, held every flow's
    end up by 0.5-1 s (measured: bench/fanout.py)."""
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

