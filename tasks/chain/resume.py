"""Training that survives its process: the checkpoint of a training lives in a folder named by what is trained
(config, data, split, statistics, augmented data, source weights), so that running the same flow again after a
kill continues from the last completed epoch instead of starting over.

A folder is held with an exclusive `flock` while its training runs. The kernel drops the lock when the process
dies, even by SIGKILL, so a held lock always means a live run; a second run of the same thing at the same time
trains on its own, in its workspace. The folder is deleted when training ends, except after an unexpected error,
which Prefect's retry (or a re-run) continues from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect.logging import get_run_logger

from tasks import tracking
from tasks.chain.refs import AugmentedRef, DatasetRef, ManifestRef, SourceRef, StatsRef
from tasks.settings import HOME, stage_key
from trainlib.checkpoint import load_checkpoint
from trainlib.config import PipelineConfig
from trainlib.errors import TrainflowError, TrainingError


def training_key(config: PipelineConfig, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef,
                 augmented: AugmentedRef, source: SourceRef | None) -> str:
    """Names what a training run computes: equal keys, equal training (same seed, CPU)."""
    return stage_key("train", config.model_dump(mode="json"), dataset.digest, manifest.digest, stats.path,
                     augmented.digest, source.identity() if source else None)


@dataclass
class Slot:
    """Where one training keeps its checkpoint; `previous` is the run that wrote it, if another run did."""

    checkpoint: Path
    previous: dict | None = None


@contextlib.contextmanager
def slot(key: str, workspace: Path, run_id: str, flow_run_id: str) -> Iterator[Slot]:
    """The resumable checkpoint of training `key` for the block, or one in `workspace` while another live
    process trains the same thing. Ends by deleting the folder unless the block failed unexpectedly."""
    folder = HOME / "resume" / key
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield Slot(workspace / "checkpoint.pt")
        return
    keep = False
    try:
        owner = folder / "run.json"
        previous = json.loads(owner.read_text()) if owner.exists() else None
        owner.write_text(json.dumps({"run_id": run_id, "flow_run_id": flow_run_id}))
        found = previous and previous["run_id"] != run_id and (folder / "checkpoint.pt").exists()
        yield Slot(folder / "checkpoint.pt", previous if found else None)
    except (TrainflowError, TrainingError):
        raise  # fails the same way every time: nothing to continue from
    except BaseException:
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def adopt(previous: dict, checkpoint: Path, run_id: str) -> int:
    """Continue an interrupted run's training in run `run_id`: copy its epochs' metrics over, link the two
    runs, and close the interrupted MLflow run and Prefect flow run if they still say running.
    -> the last completed epoch."""
    log = get_run_logger()
    ck = load_checkpoint(checkpoint)
    epoch, old = ck["epoch"], previous["run_id"]
    logger = tracking.RunLogger(run_id)
    for metrics in ck["history"]:
        logger.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])
    logger.set_tags({"resumed_from_run": old, "resumed_after_epoch": epoch})
    reason = f"interrupted after epoch {epoch}; training continued in run {run_id}"
    try:
        if tracking.client().get_run(old).info.status == "RUNNING":
            tracking.finish_run(old, reason)
    except Exception as exc:  # a deleted run, a store that changed: bookkeeping must not stop the training
        log.warning("could not close the interrupted MLflow run %s: %s", old, exc)
    _crash_flow_run(previous.get("flow_run_id"), reason, log)
    log.warning("continuing after epoch %d of the interrupted run %s", epoch, old)
    return epoch


def _crash_flow_run(flow_run_id: str | None, reason: str, log) -> None:
    """Mark the interrupted flow run Crashed, as Prefect would have if it had seen the process die."""
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            if client.read_flow_run(flow_run_id).state_type.value in ("RUNNING", "PENDING"):
                client.set_flow_run_state(flow_run_id, Crashed(message=reason), force=True)
    except Exception as exc:  # another Prefect API (the run came from elsewhere), or it is gone
        log.warning("could not mark the interrupted flow run %s crashed: %s", flow_run_id, exc)
