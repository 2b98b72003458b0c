"""`trainflow ui`: MLflow's UI and REST API for the local store, served by the trainflow process itself.

`mlflow server` would start a tree of processes (the server, uvicorn, a job runner and seven huey workers: about
2.5 GB resident here), and a signal to the trainflow process alone left all of them serving the port. Here
MLflow's ASGI app runs in this process under uvicorn, so there is no tree: whatever ends the process (SIGTERM,
SIGINT, SIGHUP, SIGKILL) ends the server and frees the port. MLflow's job execution (used by its GenAI
evaluation jobs, not to browse runs) stays off.
"""

from __future__ import annotations

import os
import sys
import warnings

from flows import processes
from tasks import settings

QUIET = "warning"  # uvicorn's log level: start-up and per-request lines are noise; warnings and errors stay


def serve(store: str, host: str, port: int) -> None:
    """Serve the MLflow UI for `store` on host:port until the process is told to stop."""
    # MLflow's server modules read these when imported: set them first
    os.environ.update({
        "_MLFLOW_SERVER_FILE_STORE": store,  # the tracking store
        "_MLFLOW_SERVER_REGISTRY_STORE": store,  # the model registry, in the same database
        # where experiments created in the UI keep their artifacts: beside those of local runs
        "_MLFLOW_SERVER_ARTIFACT_ROOT": settings.local_artifact_root().as_uri(),
        "_MLFLOW_SGI_NAME": "uvicorn",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    })
    import uvicorn

    with warnings.catch_warnings():  # MLflow imports Starlette's deprecated WSGI middleware: not ours to fix
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server.fastapi_app import app

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=QUIET, access_log=False))

    def stop() -> None:
        server.should_exit = True

    with processes.served_until_stopped(stop) as received:  # Ctrl+C, SIGTERM, SIGHUP: a clean stop, exit 0
        server.run()
    print(processes.stopped_line(received), file=sys.stderr)
