"""One store per project, for real: runs made locally and runs made while the project's stack is up land in
the same MLflow store and Prefect database, `trainflow up` serves them (checked in headless Chromium), and
`models:/NAME@ALIAS` names the same model before and after `up`. Commands find the project from a subfolder
(tasks/settings.py `find_home`) and use the running stack without the user sourcing anything. Bad input
leaves no `.trainflow/` behind; a full disk is one line, leaves the stores whole, and the next run succeeds."""

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
                                        (["status"], 0), (["down"], 0), (["cache"], 0),
                                        (["cache", "--prune"], 0)])  # status: 0, no stack up is no failure
def test_bad_input_and_looking_around_leave_no_store(tmp_path, args, code):
    project = Project(tmp_path / "fresh")
    out = project.run(*args, timeout=120)
    assert out.returncode == code and "Traceback" not in out.stderr, out.stderr
    assert not project.store.exists()
    if args == ["status"]:  # where the README sends a user for the tracking URI, before any stack
        assert "no stack is running" in out.stdout, out.stdout
        assert f"MLFLOW_TRACKING_URI=sqlite:///{project.store / 'mlflow.db'}" in out.stdout, out.stdout


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


# in a mount namespace of its own (gone with its last process): the store on a 40 MiB tmpfs, 8 MiB of it free
FULL_DISK = """
set -u
mount -t tmpfs -o size=40m trainflow-full "$TRAINFLOW_HOME"
fallocate -l 32m "$TRAINFLOW_HOME/ballast"
"$TRAINFLOW" run --set training.epochs=2 > "$OUT/full.out" 2> "$OUT/full.err"; echo $? > "$OUT/full.rc"
"$PY" -c "$STORES" > "$OUT/full.json"
rm "$TRAINFLOW_HOME/ballast"
"$TRAINFLOW" run --set training.epochs=2 --json > "$OUT/freed.out" 2> "$OUT/freed.err"; echo $? > "$OUT/freed.rc"
"$PY" -c "$STORES" > "$OUT/freed.json"
"""
STORES = """
import json, os, sqlite3
home = os.environ["TRAINFLOW_HOME"]
said = {}
for name in ("mlflow.db", "prefect/prefect.db"):
    with sqlite3.connect(os.path.join(home, name)) as db:
        said[name] = db.execute("pragma integrity_check").fetchone()[0]
with sqlite3.connect(os.path.join(home, "mlflow.db")) as db:
    said["versions"] = [v for (v,) in db.execute("select version from model_versions")]
    said["runs"] = dict(db.execute("select run_uuid, status from runs"))
print(json.dumps(said))
"""


def test_a_full_disk_is_one_line_leaves_the_stores_whole_and_the_next_run_after_freeing_succeeds(tmp_path):
    home, out = tmp_path / "project" / ".trainflow", tmp_path / "out"
    home.mkdir(parents=True)
    out.mkdir()
    isolated = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))} | {
        "TRAINFLOW_HOME": str(home), "TRAINFLOW_WARM_MINUTES": "0",  # its own process: the namespace's mount
        "TRAINFLOW": TRAINFLOW, "PY": sys.executable, "STORES": STORES, "OUT": str(out)}
    done = subprocess.run([*isolated, "bash", "-c", FULL_DISK], cwd=home.parent, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{isolated} could not run the store on a small disk: {done.stderr}"
    said = [line for line in (out / "full.err").read_text().splitlines() if not line.startswith("training ")]
    assert (out / "full.rc").read_text().strip() == "1" and "Traceback" not in "\n".join(said), said
    assert said[-1].startswith(f"failed: the disk holding {home} is full (") and said[-1].endswith(
        "free some space, then run the command again (`trainflow cache --prune` drops the stage cache)"), said
    # besides the title: at most the line saying its MLflow run could not be marked (the next run marks it)
    assert len(said) <= 3 and all("could not be marked FAILED" in line for line in said[1:-1]), said
    full = json.loads((out / "full.json").read_text())
    assert full["mlflow.db"] == full["prefect/prefect.db"] == "ok" and full["versions"] == [], full
    assert (out / "freed.rc").read_text().strip() == "0", (out / "freed.err").read_text()[-3000:]
    freed, summary = json.loads((out / "freed.json").read_text()), json.loads((out / "freed.out").read_text())
    assert freed["mlflow.db"] == freed["prefect/prefect.db"] == "ok" and freed["versions"] == [1], freed
    assert summary["version"] == 1 and freed["runs"][summary["run_id"]] == "FINISHED"
    assert all(status != "FINISHED" for run, status in freed["runs"].items() if run in full["runs"]), (full, freed)
