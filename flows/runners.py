"""Where the fan-out flows (tuning trials, compare variants, ensemble members) run their task runs.

- `thread` (default): the flow's own thread pool, in this process;
- `dask`: a Dask LocalCluster started for the flow on 127.0.0.1, one single-threaded worker process per
  parallel task run (prefect-dask's DaskTaskRunner);
- `dask://host:port`: an existing Dask scheduler and its workers, on this machine or others.

Task runs carry references (file paths, MLflow run ids, a study's storage URL), never tensors, and log to MLflow
with explicit run ids, so they run the same in any process. Workers elsewhere need what the flow's files and
servers are: the same TRAINFLOW_HOME (a shared filesystem) and MLFLOW_TRACKING_URI (a tracking server).
"""

from __future__ import annotations

import contextlib
import copyreg
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from trainlib.errors import ConfigError

CHOICES = "thread | dask | dask://host:port"
CONNECT_SECONDS = 10  # how long to wait for an existing Dask scheduler to answer

Submit = Callable[..., Any]  # submit(task, *args, **kwargs) -> its PrefectFuture


def check(runner: str | None) -> str:
    """The runner named, normalized; anything else is a ConfigError listing the choices."""
    runner = runner or "thread"
    if runner in ("thread", "dask") or re.fullmatch(r"dask://[^\s/:]+:\d+", runner):
        return runner
    raise ConfigError(f"--runner {runner!r}: not a task runner; valid: {CHOICES}")


def in_other_processes(runner: str | None) -> bool:
    """Whether task runs leave this process (then nothing may be shared through its memory)."""
    return check(runner) != "thread"


@contextlib.contextmanager
def fan_out(runner: str | None, workers: int, parent_run_id: str) -> Iterator[Submit]:
    """For the block, a `submit(task, *args, **kwargs)` that runs task runs on `runner`; a cluster started
    for the block (with `workers` worker processes) stops with it. A block that ends on an error (a stop, a failed
    task run) first ends the trainings of its task runs in this process's threads at their next batch and waits for
    them, then marks the child runs of `parent_run_id` still RUNNING (a stopped cluster's) KILLED with the reason: no
    child of a run that did not finish says RUNNING, or FINISHED for work it did not do."""
    from tasks import tracking  # here: the command line's checks import this module, and MLflow is slow to load

    runner = check(runner)
    try:
        if runner == "thread":
            from trainlib import loop

            submitted = []

            def submit(task, *args, **kwargs):
                submitted.append(task.submit(*args, **kwargs))
                return submitted[-1]

            with loop.stoppable() as stop:
                try:
                    yield submit
                except BaseException as exc:
                    stop(tracking.failure(exc))
                    for future in submitted:
                        future.wait()
                    raise
            return
        from prefect.utilities.callables import get_call_parameters

        with _dask(runner, workers) as dask:
            yield lambda task, *args, **kwargs: dask.submit(task, get_call_parameters(task.fn, args, kwargs))
    except BaseException as exc:
        tracking.end_running_children(parent_run_id, f"{tracking.failure(exc)} (the run it belongs to, "
                                                     f"{parent_run_id}, ended on it)")
        raise


def _torch_classes_by_name() -> None:
    """Let cloudpickle send `torch.classes` by name. Prefect sends the flow object with each task run, and
    cloudpickle sends a flow's function by value, with the submodules of torch its tasks seem to use: one whose
    code reads `.classes` (e.g. a dataset's classes) names `torch.classes`, an object that cannot be pickled."""
    import torch

    copyreg.pickle(type(torch.classes), lambda _: (importlib.import_module, ("torch.classes",)))


@contextlib.contextmanager
def _dask(runner: str, workers: int) -> Iterator[Any]:
    import dask
    from prefect_dask import DaskTaskRunner

    _torch_classes_by_name()
    if not os.environ.get("TRAINFLOW_DEBUG"):  # the cluster's comings and goings: noise beside the progress bar
        logging.getLogger("distributed").setLevel(logging.WARNING)

    client = {"timeout": CONNECT_SECONDS}
    if runner == "dask":
        options = {"cluster_kwargs": {"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                      "host": "127.0.0.1", "dashboard_address": None,
                                      "silence_logs": logging.ERROR}}
        settings = {
            "distributed.worker.daemon": False,  # workers may start processes (training.devices > 1)
            # the nanny's aggressive memory trimming (glibc trim threshold 64 KiB) makes torch training on CPU
            # about 2x slower (measured here): workers keep glibc's default
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    else:
        options, settings = {"address": "tcp://" + runner.removeprefix("dask://")}, {}
    environ = dict(os.environ)  # a local cluster's nannies run here and write their workers' settings into it
    try:
        with dask.config.set(settings), DaskTaskRunner(**options, client_kwargs=client) as task_runner:
            try:
                task_runner.client  # noqa: B018 - connects (or starts the cluster) now, not at the first task run
            except OSError as exc:
                raise ConfigError(f"--runner {runner}: {unreachable(runner, exc)}") from None
            _restore(environ)
            yield task_runner
    finally:
        _restore(environ)


def unreachable(runner: str, exc: Exception) -> str:
    if runner == "dask":
        return f"could not start a local Dask cluster ({exc})"
    return (f"the Dask scheduler does not answer ({exc}); start it (`dask scheduler` and `dask worker`) or use "
            "--runner dask for a local cluster")


def _restore(environ: dict[str, str]) -> None:
    """Undo what was added to or changed in this process's environment since `environ` was taken."""
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
