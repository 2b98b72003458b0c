"""`trainflow serve-model`: one registered model version behind MLflow's scoring API, served by this process.

The URI (a registered version, or a run's model: tasks/registry/model_ref.py) is resolved once, at start: an alias
names the version it points at then, and the server keeps serving that version when the alias moves (its /health
says which; restart it to follow the alias). An answer is a row of class scores per input, in the order of the
model's classes, which /health lists (`classes`, as registration recorded them). The model loads in
this process, in the project's environment: `mlflow models serve` would build a virtualenv from the model's
requirements (offline here, it cannot) and start a tree of processes. MLflow's own scoring app answers
/invocations, /ping and /version; /health is replaced by one that names the model served and its classes.

Two guards stand in front of MLflow's app: inputs holding NaN or an infinity are refused with 400 (a network
answers them with NaN scores, which look like an answer), and an error's message says the reason without the data
(MLflow's starts with a dump of the rows it could not score, and repeats a body it could not parse: a 10 MB body of
garbage came back whole), cut to MESSAGE_LIMIT characters.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
import urllib.request

import numpy as np
import uvicorn
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import scoring_server

from flows import processes
from tasks.registry.model_ref import ModelRef, load_pyfunc, resolve
from trainlib.device import resolve_device
from trainlib.errors import ConfigError

QUIET = "warning"  # uvicorn's log level: start-up and per-request lines are noise; warnings and errors stay
POLL = 0.1  # seconds between the readiness checks of the server's own /health
GRACE = 10  # seconds a stop waits for requests in flight before closing their connections
MESSAGE_LIMIT = 2000  # characters of an error's message answered


def run(uri: str, host: str, port: int, device: str = "auto") -> None:
    """Serve the version `uri` names now on host:port, running it on `device`, until SIGINT, SIGTERM or SIGHUP;
    then return."""
    target = resolve_device(device, "--device")  # first, with the port: bad input, told before a model is loaded
    sock = _bind(host, port)
    try:
        ref = resolve(uri)
        model = load_pyfunc(ref, target)  # the pinned version: the alias may move meanwhile
        run_by = f", logged by run {ref.run_id}" if ref.run_id else ""
        classes = classes_of(model)
        print(f"loaded {ref.describe()} from {ref.pinned}{run_by}, on {target}; {_in_order(classes)}", file=sys.stderr)
        server = uvicorn.Server(uvicorn.Config(_app(model, ref, classes), host=host, port=port, log_level=QUIET,
                                               access_log=False, timeout_graceful_shutdown=GRACE))
        url = f"http://{_in_url(host)}:{port}"
        ready = f"serving {ref.describe()} on {url}  (POST /invocations; GET /health; Ctrl+C stops)"
        stopped_by = _serve(server, sock, _in_url(_reachable(host)), port, ready)
    finally:
        sock.close()
    print(processes.stopped_line(stopped_by), file=sys.stderr)


def _bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (uvicorn listens on it later): nothing else can take the port meanwhile."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses its port at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use: stop what serves it or choose another with "
                              "--port") from None
        raise ConfigError(f"cannot serve on {host} port {port}: {exc.strerror or exc}") from None
    return sock


class _Finite:
    """`model`, refusing inputs that hold NaN or an infinity (MLflow answers a refusal raised here with 400)."""

    def __init__(self, model):
        self.model, self.metadata = model, model.metadata

    def predict(self, data, params=None):
        values = np.asarray(data.select_dtypes("number") if hasattr(data, "select_dtypes") else data)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
            raise MlflowException(f"the inputs hold NaN or an infinity, in {len(rows)} of {len(values)} rows (the "
                                  f"first: row {rows[0]}); the model takes finite numbers", INVALID_PARAMETER_VALUE)
        return self.model.predict(data, params=params)


def classes_of(model) -> list[str] | None:
    """The classes of a loaded model in the order of its scores: column i of an answer's row is classes[i]. From what
    registration recorded in the model's metadata (`trainflow`, trainlib.scoring.InputSpec: a Dataset's `classes`,
    an image folder's class folders sorted by name); None for a model logged without it."""
    described = (getattr(model.metadata, "metadata", None) or {}).get("trainflow") or {}
    classes = described.get("classes")
    return [str(c) for c in classes] if classes else None


def _in_order(classes: list[str] | None, most: int = 20) -> str:
    """The classes as the start-up line gives them: `scores per input in the order of its 10 classes: 0, 1, ...`."""
    if not classes:
        return "its classes are not recorded with it (logged before trainflow kept them): scores are by class index"
    shown = ", ".join(classes[:most]) + (f", ... ({len(classes)} in all; GET /health lists them)"
                                         if len(classes) > most else "")
    return f"scores per input in the order of its {len(classes)} classes: {shown}"


def _app(model, ref: ModelRef, classes: list[str] | None):
    """MLflow's scoring app for `model`, its /health naming the model it serves and its classes (in the order of the
    scores it answers), with the guards above."""
    from starlette.responses import Response

    app = scoring_server.init(_Finite(model))
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]
    about = {"status": "ok", "model": ref.name, "version": ref.version, "alias": ref.alias, "run_id": ref.run_id,
             "uri": ref.pinned, "classes": classes}

    @app.get("/health")
    async def health() -> dict:
        return about

    @app.middleware("http")
    async def short_errors(request, call_next):
        response = await call_next(request)
        if response.status_code < 400:
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])
        try:
            error = json.loads(body)
            message = error["message"]
        except (ValueError, KeyError, TypeError):
            error, message = {}, body.decode(errors="replace")
        if message.startswith("Failed to predict data '") and "\nError: " in message:
            message = "Failed to predict the data: " + message.split("\nError: ", 1)[1]
        if len(message) > MESSAGE_LIMIT:
            message = f"{message[:MESSAGE_LIMIT]}... ({len(message)} characters, cut)"
        error["message"] = message
        error.pop("stack_trace", None)
        return Response(json.dumps(error), status_code=response.status_code, media_type="application/json")

    return app


def _serve(server: uvicorn.Server, sock: socket.socket, local: str, port: int, ready: str) -> list[int]:
    """Run `server` on `sock` in this thread until a stop signal (flows/processes.py `served_until_stopped`); print
    `ready` once it answers. -> the signals that stopped it."""
    done = threading.Event()
    watcher = threading.Thread(target=_announce, args=(f"http://{local}:{port}/health", ready, done), daemon=True)

    def stop() -> None:
        server.should_exit = True  # also before uvicorn has started: it then shuts down at once

    with processes.served_until_stopped(stop) as received:
        watcher.start()
        try:
            server.run(sockets=[sock])
        finally:
            done.set()
            watcher.join()
    return received


def _announce(health: str, ready: str, done: threading.Event) -> None:
    """Print `ready` on stdout once a real request to the server's /health answers 200 (not when uvicorn says it
    started): whoever waits for the line can send requests at once."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # this machine: never through a proxy
    while not done.is_set():
        try:
            with direct.open(health, timeout=2) as answer:
                if answer.status == 200:
                    print(ready, flush=True)
                    return
        except OSError:
            pass
        done.wait(POLL)


def _reachable(host: str) -> str:
    """Where this machine reaches a server bound to `host` (the wildcard addresses are not destinations)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
