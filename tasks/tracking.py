"""The MLflow side: experiments, runs, a logger for trainlib's engine, datasets, models.

Everything takes an explicit `run_id` (MLflow's fluent active run is per thread, and tasks may run
in other threads or processes).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from tasks import settings
from trainlib.errors import ConfigError
from trainlib.redact import redact

if TYPE_CHECKING:
    import torch

PARAM_LIMIT = 6000  # MLflow's maximum length of a param value
LOG_INPUTS_ATTEMPTS = 3  # see log_manifests
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_held():
    """A stop signal (SIGINT, SIGTERM, SIGHUP: Python handlers that raise) that comes while the block writes to the
    tracking store takes effect when the block ends. Raised in the middle of a write, its KeyboardInterrupt (or
    `Stopped`) can leave a SQLite connection holding the store's lock, never closed while the traceback refers to
    its cursor: every later write, the one marking the run FAILED first, waits MLflow's 20 s busy timeout and fails
    with `database is locked` (seen once in CI, Ctrl+C during a metrics write). Python runs signal handlers in the
    main thread only, so elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum))
                for s in STOP_SIGNALS if callable(signal.getsignal(s))}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])


def client() -> MlflowClient:
    return MlflowClient()


def open_store() -> None:
    """Connect to the tracking store now (SQLite: open it and check its schema, about half a second); every
    later client reuses the connection."""
    client().search_experiments(max_results=1)


def experiment_id(name: str) -> str:
    """The experiment called `name`, created on first use (local stores keep artifacts in .trainflow)."""
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(f"name: the MLflow experiment {name!r} was deleted; restore it in the MLflow UI, remove "
                          "it for good with `mlflow gc`, or choose another name")
    if found is not None:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (settings.local_artifact_root() / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return c.get_experiment_by_name(name).experiment_id


def _git(*args: str) -> str | None:
    """`git args` in the code's folder -> its output, None where there is no git or no repository."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def git_commit() -> str | None:
    """The commit of the code this process runs (asked once: every child run of a fan-out records the same, without
    a `git` process each)."""
    out = _git("rev-parse", "HEAD")
    return out.strip() if out else None


PACKAGES = ("trainflow", "torch", "torchvision", "mlflow", "prefect")  # their versions tag every run


@functools.cache
def code_tags() -> dict[str, str]:
    """What code a run ran, beside its commit: whether tracked files differed from it (`trainflow.code.dirty`,
    where there is a repository), the packages' versions (`trainflow.version.PACKAGE`) and the CPU's vector
    capability (`trainflow.cpu_capability`: AVX2 and AVX-512 round differently), so a rerun can say what changed."""
    import importlib.metadata

    import torch

    tags = {f"trainflow.version.{p}": importlib.metadata.version(p) for p in PACKAGES}
    tags["trainflow.version.torch"] = torch.__version__  # with its build (+cpu, +cu130), which the metadata lacks
    tags["trainflow.cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    changes = _git("status", "--porcelain", "--untracked-files=no")
    if changes is not None:
        tags["trainflow.code.dirty"] = "true" if changes.strip() else "false"
    return tags


def start_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
    """Create the run (nested under `parent_run_id` if given) with every param and tag; returns its id.
    Credentials in URLs among the values are redacted."""
    commit = git_commit()
    all_tags = {**code_tags(), **{k: redact(str(v)) for k, v in tags.items()},
                **({MLFLOW_GIT_COMMIT: commit} if commit else {}),
                **({MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {})}
    items = [Param(k, redact(json.dumps(v) if isinstance(v, list | dict) else str(v))[:PARAM_LIMIT])
             for k, v in params.items()]
    experiment = experiment_id(experiment)
    made: list[str] = []  # the run, once created: a failure or a signal held until the end marks it FAILED
    try:
        with signals_held():
            made.append(client().create_run(experiment, run_name=run_name, tags=all_tags).info.run_id)
            for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
                client().log_batch(made[0], params=items[i:i + 100])
    except BaseException as exc:
        if made:
            _mark_failed(made[0], exc)
        raise
    return made[0]


@contextlib.contextmanager
def failed_if_interrupted(run_id: str):
    """Anything that breaks off the block (an error, a stop signal) marks the run FAILED instead of leaving it
    RUNNING. Where the store cannot be written (a server gone), what broke the block off is still what the caller
    gets, with a line saying the run stays RUNNING."""
    try:
        yield
    except BaseException as exc:
        _mark_failed(run_id, exc)
        raise


def failure(exc: BaseException) -> str:
    """The reason recorded on a run that `exc` ended: a stop names its signal (KeyboardInterrupt's is SIGINT; Prefect's
    TerminationSignal carries its own)."""
    signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else getattr(exc, "signal", None)
    said = str(exc) or (f"stopped by {signal.Signals(signum).name}" if isinstance(signum, int) else "")
    return f"{type(exc).__name__}: {said}"


def end_running_children(run_id: str, reason: str) -> None:
    """Mark the child runs of `run_id` that still say RUNNING as KILLED, with `reason`: those whose process is gone
    (a Dask worker stopped with its cluster) cannot end their own."""
    c = client()
    found = c.search_runs([c.get_run(run_id).info.experiment_id],
                          f"tags.{MLFLOW_PARENT_RUN_ID} = '{run_id}' and attributes.status = 'RUNNING'")
    for child in found:
        with signals_held():
            c.set_tag(child.info.run_id, "failure_reason", reason[:5000])
            c.set_terminated(child.info.run_id, "KILLED")


def _mark_failed(run_id: str, exc: BaseException) -> None:
    if "MLflow" in (settings.unreachable(exc) or ""):  # the run that continues this training will (tasks/chain/resume)
        return
    try:
        finish_run(run_id, failure(exc))
    except Exception as failed:
        print(f"MLflow run {run_id} could not be marked FAILED and stays RUNNING: {str(failed).splitlines()[0]}",
              file=sys.stderr)


def finish_run(run_id: str, failure: str | None = None, status: str | None = None) -> None:
    """Mark the run FINISHED (or `status`, e.g. KILLED for a pruned trial), or FAILED with the reason as a tag."""
    with signals_held():
        if failure:
            client().set_tag(run_id, "failure_reason", failure[:5000])
        client().set_terminated(run_id, "FAILED" if failure else status or "FINISHED")


@contextlib.contextmanager
def finishing(run_id: str):
    """Ends the run when the block ends: FAILED with the reason if it raises, else FINISHED or the
    `status` the block put in the yielded dict (e.g. KILLED for a pruned trial)."""
    outcome = {"status": "FINISHED"}
    with failed_if_interrupted(run_id):
        yield outcome
    finish_run(run_id, status=outcome["status"])


METRICS_PER_BATCH = 1000  # MLflow's maximum number of metrics in one log_batch call


class RunLogger:
    """trainlib's logger protocol, writing to one MLflow run (metrics batched once per call).

    With `every` seconds, metrics wait and go in one call once `every` seconds have passed since the last one,
    before anything else this logger writes, and when its `with` block ends (also on an error): each call costs
    more than its rows (a commit, and, beside training threads holding the GIL, about 60 ms instead of 6 measured
    here: bench/fanout.py), so a short run's per-epoch metrics arrive whole at its end, a longer one's every
    `every` seconds. Every row keeps its step and the time it was logged."""

    def __init__(self, run_id: str, every: float = 0.0):
        self.run_id, self.every = run_id, every
        self.client = client()
        self._pending: list[Metric] = []
        self._sent = time.monotonic()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def flush(self) -> None:
        """Send the metrics waiting, if any."""
        pending, self._pending, self._sent = self._pending, [], time.monotonic()
        with signals_held():
            for i in range(0, len(pending), METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=pending[i:i + METRICS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if time.monotonic() - self._sent >= self.every:
            self.flush()

    def log_artifact(self, path: str, folder: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_figure(self, figure, name: str) -> None:
        self.flush()
        self.client.log_figure(self.run_id, figure, name, save_kwargs={"bbox_inches": "tight"})

    def log_dict(self, data: dict, name: str) -> None:
        self.flush()
        self.client.log_dict(self.run_id, json.loads(redact(json.dumps(data, default=str))), name)

    def log_text(self, text: str, name: str) -> None:
        self.flush()
        self.client.log_text(self.run_id, redact(text), name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """The tags, with the metrics waiting (one call)."""
        if len(self._pending) >= METRICS_PER_BATCH:
            self.flush()
        pending, self._pending, self._sent = self._pending, [], time.monotonic()
        with signals_held():
            self.client.log_batch(self.run_id, metrics=pending,
                                  tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


def log_manifests(run_id: str, manifest: pd.DataFrame, source: str, digest: str) -> None:
    """Each split's manifest as an MLflow dataset input, under its context (training/validation/testing)."""
    contexts = {"train": "training", "val": "validation", "test": "testing"}
    inputs = []
    for split, context in contexts.items():
        part = manifest[manifest["split"] == split].reset_index(drop=True)
        if part.empty:
            continue
        part = part.assign(split=part["split"].astype(str))
        with warnings.catch_warnings():  # hints about source resolution and integer columns: both expected here
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(part, source=source, targets="label", name=f"{split}-{digest[:12]}")
            entity = ds._to_mlflow_entity()
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    # MLflow looks a dataset up, then inserts it when missing, without a retry: two runs logging the same split
    # at once can both miss it, and the later insert fails on the unique (experiment, name, digest), a database
    # error MLflow reports as BAD_REQUEST. The failed call wrote nothing; once the other's commit is in, the
    # lookup finds the dataset and the call goes through. (A server that does not answer is not retried here:
    # the HTTP client has retried it already.)
    for attempt in range(LOG_INPUTS_ATTEMPTS):
        try:
            client().log_inputs(run_id, datasets=inputs)
            return
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "BAD_REQUEST" or attempt == LOG_INPUTS_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def pip_requirements() -> list[str]:
    """Explicit requirements for a logged model (inference would take >10 s and may try the network)."""
    import torch  # here: the commands that only read the registry (models, promote, rollback) never need it

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={np.__version__}"]


def _in_run_experiment(run_id: str) -> None:
    """MLflow 3 files a logged model under the active experiment, not the run's: point it at the run's."""
    mlflow.set_experiment(experiment_id=client().get_run(run_id).info.experiment_id)


def log_model(run_id: str, model: torch.nn.Module, example: np.ndarray, metadata: dict | None = None) -> str:
    """Log `model` (raw inputs in, logits out) to the run with a signature and `metadata` (kept in its MLmodel
    file); returns its model URI."""
    import torch

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    _in_run_experiment(run_id)
    info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, output),
                                    input_example=example, pip_requirements=pip_requirements(), run_id=run_id,
                                    metadata=metadata)
    return info.model_uri



ENSEMBLE_CODE = Path(__file__).parent / "ensembles" / "logged_model.py"


def log_ensemble(run_id: str, program: str, about: str, example: np.ndarray, output: np.ndarray,
                 metadata: dict | None = None) -> str:
    """Log an ensemble as a pyfunc model from code: `program` (exported torch program, raw inputs ->
    log-probabilities) and `about` (JSON description) as its artifacts; returns its model URI."""
    _in_run_experiment(run_id)
    # mlflow.pyfunc.log_model has no run_id; Model.log (which it calls) does: no thread-local active run needed
    info = mlflow.models.Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc,
                                   python_model=str(ENSEMBLE_CODE), artifacts={"program": program, "about": about},
                                   signature=infer_signature(example, output), input_example=example,
                                   pip_requirements=pip_requirements(), run_id=run_id, metadata=metadata,
                                   model_config={"device": "cpu"})  # a key MLflow lets a loader replace
    return info.model_uri
