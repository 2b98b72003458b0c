"""One store per project, for real: runs made locally and runs made while the project's stack is up land in
the same MLflow store and Prefect database, `trainflow up` serves them (checked in headless Chromium), and
`models:/NAME@ALIAS` names the same model before and after `up`. Commands find the project from a subfolder
(tasks/settings.py `find_home`) and use the running stack without the user sourcing anything. Bad input
leaves no `.trainflow/` behind."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TRAINFLOW, all_cpus
from mlflow import MlflowClient
from ports import free_port
from test_operations import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, _prefect

TINY = ["--set", "training.epochs=1", "--set", "model.channels=[8]", "--set", "model.hidden=[32]",
        "--set", "register.min_test_accuracy=0"]

# the README's snippet: load the champion from the project folder (`trainflow status` prints the tracking URI)
SNIPPET = """\
import mlflow
mlflow.set_tracking_uri("sqlite:///.trainflow/mlflow.db")
model = mlflow.pyfunc.load_model("models:/digits-cnn@champion")
"""


class Project:
    """A fresh repository whose trainflow commands find their store themselves: no TRAINFLOW_HOME, no Prefect
    or MLflow variables, commands run from a subfolder."""

    def __init__(self, folder: Path):
        self.folder, self.store = folder, folder / ".trainflow"
        (folder / ".git").mkdir(parents=True)
        (folder / "configs").mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if k != "TRAINFLOW_HOME" and not k.startswith(("PREFECT_", "MLFLOW_"))}
        self.env["TORCH_HOME"] = str(folder.parent / "torch")

    def run(self, *args, timeout=600) -> subprocess.CompletedProcess:
        return subprocess.run([TRAINFLOW, *map(str, args)], cwd=self.folder / "configs", env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=all_cpus if args[:1] == ("up",) else None)


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"{out.args}: {out.stdout}\n{out.stderr}"
    return out


@pytest.mark.parametrize("args, code", [(["run", "--set", "training.epochs=0"], 2),
                                        (["run", "--config", "missing.yaml"], 2), (["up", "--postgres", "no-url"], 2),
                                        (["status"], 1), (["down"], 0), (["cache"], 0),
                                        (["cache", "--prune"], 0)])  # status: 1 as no server is running
def test_bad_input_and_looking_around_leave_no_store(tmp_path, args, code):
    project = Project(tmp_path / "fresh")
    out = project.run(*args, timeout=120)
    assert out.returncode == code and "Traceback" not in out.stderr, out.stderr
    assert not project.store.exists()


def test_one_store_before_and_after_up(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    project = Project(tmp_path / "project")
    local = json.loads(_ok(project.run("run", *TINY, "--json")).stdout)
    local_store = MlflowClient(f"sqlite:///{project.store / 'mlflow.db'}")
    champion = local_store.get_model_version_by_alias("digits-cnn", "champion")
    assert champion.run_id == local["run_id"]

    loaded = subprocess.run([sys.executable, "-c", SNIPPET + "import sklearn.datasets, numpy as np\n"
                             "x = sklearn.datasets.load_digits().images[:5].astype(np.float32)[:, None]\n"
                             "print(model.predict(x).shape)"],
                            cwd=project.folder, env=project.env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.splitlines()[-1] == "(5, 10)", loaded.stderr
    assert {p.name for p in project.folder.iterdir()} == {".git", ".trainflow", "configs"}  # no stray mlflow.db

    prefect_port, mlflow_port = free_port(), free_port()
    try:
        up = _ok(project.run("up", "--prefect-port", prefect_port, "--mlflow-port", mlflow_port))
        assert f"project {project.folder}:" in up.stdout
        status = _ok(project.run("status")).stdout
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in status
        served = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        assert served.get_model_version_by_alias("digits-cnn", "champion").run_id == local["run_id"]
        assert served.get_run(local["run_id"]).info.status == "FINISHED"
        flow_run_id = served.get_run(local["run_id"]).data.tags["prefect.flow_run_id"]
        stack = SimpleNamespace(env={"PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api"})  # for _prefect
        with _prefect(stack) as prefect:
            flow_run = prefect.read_flow_run(flow_run_id)  # the local run's flow run, on the stack's server
        assert flow_run.state_type.value == "COMPLETED"

        # while the stack is up, a command uses it without anything sourced, and it lands in the same store
        during = _ok(project.run("run", *TINY, "--set", "training.seed=1", "--json"))
        header = " ".join(during.stderr.split())  # as a terminal shows it, wrapped or not
        assert f"(project {project.folder}; stack: Prefect http://127.0.0.1:{prefect_port}/api, " in header
        run = local_store.get_run(json.loads(during.stdout)["run_id"])
        assert run.info.artifact_uri.startswith(project.store.joinpath("mlartifacts").as_uri())
        with _prefect(stack) as prefect:
            assert len(prefect.read_flow_runs()) == 2

        experiment = served.get_experiment_by_name("digits-cnn").experiment_id
        mlflow_ui, prefect_ui = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
        shown = local_store.get_run(local["run_id"]).data.metrics["val_accuracy"]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{local['run_id']}")  # the local run's metrics
            row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="val_accuracy", exact=True))
            expect(row.get_by_role("cell").last).to_have_text(page.evaluate("v => String(v)", shown), timeout=60_000)
            page.screenshot(path=SCREENSHOTS / "store-local-run-in-stack-mlflow.png")
            page.goto(f"{prefect_ui}/runs/flow-run/{flow_run_id}")
            heading = page.locator(".page-heading")
            expect(heading).to_contain_text(flow_run.name, timeout=60_000)
            expect(heading.locator(".state-badge")).to_have_text(flow_run.state.name)
            page.screenshot(path=SCREENSHOTS / "store-local-flow-run-in-stack-prefect.png")
            browser.close()
    finally:
        down = project.run("down", timeout=120)
    assert "stopped: prefect, mlflow" in down.stdout, down.stderr
