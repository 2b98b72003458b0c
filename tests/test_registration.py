"""Registration on purpose, through the `trainflow` command as a real process: --no-register registers nothing.
(--json gives versions as ints and metrics as numbers against a real MLflow server as on SQLite: test_operations.py,
`_numbers_only` here.)"""

import json
import subprocess

from conftest import TRAINFLOW, cli_env
from mlflow import MlflowClient

TINY = ["--set", "training.epochs=1", "--set", "model.channels=[8]", "--set", "model.hidden=[32]",
        "--set", "register.min_test_accuracy=0"]
UNREGISTERED = dict.fromkeys(("registered_model", "version", "alias", "gate"))


def _trainflow(folder, *args, env=None):
    return subprocess.run([TRAINFLOW, *args], capture_output=True, text=True, timeout=600, cwd=folder,
                          env=env or cli_env(folder))


def _numbers_only(summary: dict) -> None:
    """Versions are ints (or null) and every metric a number, whatever the tracking backend."""
    gate = summary["gate"]
    assert type(summary["version"]) is int and type(gate["champion_version"]) in (int, type(None)), summary
    assert all(type(v) in (int, float) for v in summary["metrics"].values()), summary["metrics"]
    assert all(type(gate[k]) is float for k in ("test_accuracy", "threshold", "min_delta")), gate


def test_no_register_records_the_run_and_registers_nothing(tmp_path):
    first = _trainflow(tmp_path, "run", "--name", "cli-noreg", *TINY)
    assert first.returncode == 0, first.stderr
    registered = [line for line in first.stdout.splitlines() if line.startswith("registered ")]
    assert registered and registered[0].startswith("registered cli-noreg version 1: promoted to @champion ("), \
        first.stdout
    out = _trainflow(tmp_path, "run", "--json", "--no-register", "--name", "cli-noreg", *TINY)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["experiment"] == "cli-noreg" and {k: summary[k] for k in UNREGISTERED} == UNREGISTERED
    client = MlflowClient(f"sqlite:///{tmp_path}/.trainflow/mlflow.db")
    assert [int(v.version) for v in client.search_model_versions("name = 'cli-noreg'")] == [1]  # no new version
    assert int(client.get_model_version_by_alias("cli-noreg", "champion").version) == 1  # the alias unmoved
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["gate"] == "not_registered"
    assert "registered_model" not in run.data.tags
    # the run is otherwise a full record: its model is logged and can be registered later by its URI
    assert client.get_logged_model(summary["model_uri"].removeprefix("models:/")).source_run_id == summary["run_id"]

