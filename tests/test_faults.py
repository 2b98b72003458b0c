"""Faults of the stack's servers, for real: the MLflow server, then the Prefect server of a stack of its own SIGKILLed
while a run trains (tasks/settings.py `unreachable`, tasks/registry/register.py's check before registering). (A full
disk under the store: test_store.py.)"""

import json
import os
import signal
import subprocess

from mlflow import MlflowClient
from test_operations import BIN, Stack

LONG = ["--set", "training.epochs=20", "--set", "training.early_stopping.enabled=false", "--set",
        "model.channels=[64,128]"]  # about 0.3 s an epoch: a server is killed while it trains


def _killed_mid_run(stack: Stack, server: str) -> list[str]:
    """A run whose `server` is SIGKILLed once it trains -> its exit code and what it printed (training lines out)."""
    proc = subprocess.Popen([BIN / "trainflow", "run", *LONG], cwd=stack.home, env=stack.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    said = []
    for line in proc.stderr:  # the progress lines come as the epochs end
        said.append(line.rstrip("\n"))
        if line.startswith("training "):
            pid = int((stack.home / ".trainflow" / "stack" / f"{server}.pid").read_text().split()[0])
            os.killpg(pid, signal.SIGKILL)
            break
    _, rest = proc.communicate(timeout=300)
    said += rest.splitlines()
    return [proc.returncode, *(line for line in said if not line.startswith("training ")
                               and "continuing after epoch" not in line)]  # the second continues the first's training


def test_a_server_killed_mid_run_fails_it_in_one_line_and_after_up_the_next_run_registers(tmp_path):
    """The stack's MLflow server, then its Prefect server, SIGKILLed while a run trains: each run fails with one line
    naming the server (no traceback, nothing else), no version is registered, `trainflow up` starts the server
    again and the next run succeeds. Its --json gives versions as ints against an MLflow server (whose client
    returns strings), as on SQLite (test_cli.py)."""
    from test_registration import _numbers_only

    stack = Stack(tmp_path)
    stack.env |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "PREFECT_CLIENT_MAX_RETRIES": "1"}  # the failures sooner
    try:
        stack.up()
        mlflow_url, prefect_url = stack.env["MLFLOW_TRACKING_URI"], stack.env["PREFECT_API_URL"]
        header = f"Prefect {prefect_url}, MLflow {mlflow_url})"  # the title line of the run
        for server, name, url in (("mlflow", "MLflow", mlflow_url), ("prefect", "Prefect", prefect_url)):
            code, *said = _killed_mid_run(stack, server)
            assert code == 1 and len(said) == 2 and said[0].endswith(header), "\n".join(said)
            assert said[1] == f"failed: the {name} server at {url} stopped answering while this command used it: " \
                              "`trainflow status` shows the stack's servers, `trainflow up` starts the stopped one " \
                              "again; then run the command again"
            assert not MlflowClient(mlflow_url).search_model_versions() if server == "prefect" else True
            stack.up()
        client = MlflowClient(mlflow_url)
        assert client.search_model_versions() == []  # neither run left a version
        summaries = [json.loads(stack.run(BIN / "trainflow", "run", "--json", *LONG, cwd=stack.home).stdout)
                     for _ in range(2)]
        for summary in summaries:
            _numbers_only(summary)
        assert [s["version"] for s in summaries] == [1, 2] and summaries[1]["gate"]["champion_version"] == 1
        assert summaries[0]["mlflow_url"].startswith(f"{mlflow_url}/")
        runs = client.search_runs([client.get_experiment_by_name("digits-cnn").experiment_id])
        statuses = {r.info.run_id: (r.info.status, r.data.tags.get("failure_reason", "")) for r in runs}
        assert sorted(s for s, _ in statuses.values()) == ["FAILED", "FAILED", "FINISHED", "FINISHED"], statuses
        # the MLflow server's run could not be marked; the next run continued its training and marked it
        assert any(r.startswith("interrupted after epoch ") for _, r in statuses.values()), statuses
        assert any("the Prefect server at" in r for _, r in statuses.values()), statuses
    finally:
        stack.stop()
