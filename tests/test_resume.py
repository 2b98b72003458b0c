"""A training process killed with SIGKILL mid-run: running the same flow again continues from the last
completed epoch and ends with the same metrics as a run that was never interrupted. The commands run in their own
processes (the warm process off): the process killed is the one that trains, its temporary Prefect API writes the
project's prefect.db. (A warm process's fork killed so: tests/test_warm.py.)"""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
import torch
from conftest import TRAINFLOW, cli_env
from mlflow import MlflowClient

from tasks.chain import resume
from tasks.settings import HOME
from trainlib.errors import DataError, TrainingError

EPOCHS = 8
ARGS = ["run", "--json", "--set", "name=killed", "--set", f"training.epochs={EPOCHS}",
        "--set", "training.early_stopping.enabled=false", "--set", "model.channels=[64,128]"]


def _env(folder) -> dict[str, str]:
    return cli_env(folder) | {"TRAINFLOW_WARM_MINUTES": "0"}


def _run(folder, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([TRAINFLOW, *ARGS], capture_output=True, text=True, timeout=600, env=env or _env(folder),
                          cwd=folder)


def _checkpointed_epoch(home) -> int:
    """The last epoch in the resumable checkpoint, 0 while there is none (or it is being replaced)."""
    for path in (home / "resume").glob("*/checkpoint.pt"):
        try:
            return torch.load(path, weights_only=True)["epoch"]
        except Exception:
            return 0
    return 0


def _kill_after_epoch(folder, epoch: int) -> int:
    """Start the run, SIGKILL it once `epoch` is checkpointed (so during a later epoch); -> the last epoch the
    checkpoint holds at the kill."""
    proc = subprocess.Popen([TRAINFLOW, *ARGS], env=_env(folder), cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while (done := _checkpointed_epoch(folder / ".trainflow")) < epoch and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return max(done, _checkpointed_epoch(folder / ".trainflow"))


def test_a_killed_run_continues_from_its_last_epoch_with_the_same_result(tmp_path):
    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    straight = _run(tmp_path / "straight", cli_env(tmp_path / "straight"))  # forwarded: the same numbers as here
    assert straight.returncode == 0, straight.stderr
    expected = json.loads(straight.stdout)["metrics"]

    folder = tmp_path / "killed"
    at = _kill_after_epoch(folder, 2)
    assert 2 <= at < EPOCHS  # killed while training, not after it
    again = _run(folder)
    assert again.returncode == 0, again.stderr
    assert f"continuing after epoch {at} of the interrupted run" in again.stderr
    resumed = json.loads(again.stdout)
    for name in ("test_loss", "test_accuracy", "best_val_loss", "best_epoch", "stopped_epoch"):
        assert resumed["metrics"][name] == expected[name], name

    client = MlflowClient(f"sqlite:///{folder / '.trainflow' / 'mlflow.db'}")
    run = client.get_run(resumed["run_id"])
    killed = client.get_run(run.data.tags["resumed_from_run"])
    assert run.data.tags["resumed_after_epoch"] == str(at)
    assert killed.info.status == "FAILED"
    assert killed.data.tags["failure_reason"] == (f"interrupted after epoch {at}; training continued in run "
                                                  f"{run.info.run_id}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(1, EPOCHS + 1))  # the killed run's epochs copied over, each once
    assert not list((folder / ".trainflow" / "resume").iterdir())  # nothing left to resume
    with sqlite3.connect(folder / ".trainflow" / "prefect" / "prefect.db") as db:
        states = sorted(s for (s,) in db.execute("select state_type from flow_run"))
    assert states == ["COMPLETED", "CRASHED"]  # the killed flow run no longer says Running


def test_the_same_training_at_the_same_time_trains_in_its_own_workspace(tmp_path):
    with resume.slot("same-training", tmp_path, "run-a", "flow-a") as first:
        assert first.checkpoint == HOME / "resume" / "same-training" / "checkpoint.pt"
        with resume.slot("same-training", tmp_path, "run-b", "flow-b") as second:  # the lock is taken
            assert second.checkpoint == tmp_path / "checkpoint.pt" and second.previous is None
    assert not (HOME / "resume" / "same-training").exists()  # training ended: nothing to resume


@pytest.mark.parametrize("error, kept", [(RuntimeError("worker lost"), True), (KeyboardInterrupt(), True),
                                         (TrainingError("loss became NaN"), False), (DataError("bad file"), False)])
def test_only_an_unexpected_end_leaves_a_checkpoint_to_continue_from(tmp_path, error, kept):
    with pytest.raises(type(error)):
        with resume.slot("interrupted", tmp_path, "run-a", "flow-a") as held:
            held.checkpoint.write_bytes(b"epoch 1")
            raise error
    assert (HOME / "resume" / "interrupted").exists() == kept
    if kept:
        with resume.slot("interrupted", tmp_path, "run-b", "flow-b") as held:
            assert held.previous == {"run_id": "run-a", "flow_run_id": "flow-a"}
        with resume.slot("interrupted", tmp_path, "run-c", "flow-c") as held:
            assert held.previous is None  # the run that continued it finished
