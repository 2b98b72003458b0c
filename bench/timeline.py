"""The instrumented child of bench.overhead and bench.fanout: runs `trainflow run --json` (or the trainflow
arguments given after the file) in this process and records where the time goes. MLflow calls are timed by
wrapping MlflowClient's methods and Model.log (model logging);
task durations come from the Prefect API afterwards. Writes one JSON object to the file given.

    python -m bench.timeline OUT.json [ARGS...]   (with BENCH_T0 = the parent's time.time() before it started us)

It imports nothing from bench/, so it also runs as a file in another checkout (bench.fanout's "before" figure:
`python /path/to/bench/timeline.py OUT.json ARGS...` with that checkout first on the path).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))
T_PY = time.time()  # the interpreter is up; nothing imported yet

_depth = threading.local()
SPENT = {"mlflow": 0.0, "model": 0.0}


def _timed(fn, bucket: str):
    """Time the outermost call only (model logging calls MlflowClient methods inside)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_depth, "n", 0):
            return fn(*args, **kwargs)
        _depth.n = 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[bucket] += time.perf_counter() - start
            _depth.n = 0
    return wrapper


def instrument() -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    for name, fn in vars(MlflowClient).items():
        if callable(fn) and not name.startswith("_"):
            setattr(MlflowClient, name, _timed(fn, "mlflow"))
    mlflow.models.Model.log = classmethod(_timed(mlflow.models.Model.log.__func__, "model"))
    mlflow.register_model = _timed(mlflow.register_model, "mlflow")


def task_times(flow_run_id: str) -> tuple[dict, list[dict]]:
    """The flow run's (start, end) and its task runs' names and (start, end), as epoch seconds."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
    flow = {"start": fr.start_time.timestamp(), "end": fr.end_time.timestamp()}
    return flow, [{"name": t.task_key.rsplit("-", 1)[0] if t.task_key else t.name, "start": t.start_time.timestamp(),
                   "end": t.end_time.timestamp()} for t in tasks if t.start_time and t.end_time]


def main(out: str, args: list[str]) -> None:
    import cli.main as console_script
    from flows import local_api

    atexit.register(console_script._leave)  # exit as the console script does

    local_api.start()  # as the CLI does first (a no-op with PREFECT_API_URL set)
    instrument()  # imports MLflow (the CLI imports it a moment later)
    t_imported = time.time()
    from cli.main import main as cli

    code = cli(args or ["run", "--json"])  # the summary goes to stdout, for the parent
    t_done = time.time()
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flow_run_id = str(client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0].id)
    flow, tasks = task_times(flow_run_id)
    with open(out, "w") as f:  # "queried": the end of this benchmark's own queries, left out of the wall time
        json.dump({"code": code, "t0": T0, "python": T_PY, "imported": t_imported, "done": t_done,
                   "queried": time.time(), "flow": flow, "tasks": tasks, "spent": SPENT}, f)
    console_script._exit_code = code
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
