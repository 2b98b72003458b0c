"""Operations end to end, for real: `trainflow up` (a Prefect server and an MLflow server on 127.0.0.1), a
process work pool, `prefect deploy --all`, a worker, a deployment run and an interval schedule executed by
the worker, results on the MLflow server, and both UIs in headless Chromium (screenshots kept in
test-output/operations/). Every process is stopped at the end."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import all_cpus, listening, own_warm
from mlflow import MlflowClient
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCREENSHOTS = Path(os.environ.get("TRAINFLOW_TEST_OUTPUT", ROOT / "test-output")) / "operations"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",  # no network lookups:
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # closed net
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Stack:
    """The servers started by `trainflow up`, the environment that points at them, and a worker."""

    def __init__(self, home: Path):
        self.home, self.worker, self.warm = home, None, None
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))} | {
            "TRAINFLOW_HOME": str(home / ".trainflow"), "PREFECT_HOME": str(home / "prefect-cli"),
            "TRAINFLOW_WARM_DIR": str(home / "warm"),  # its own: no other test's `trainflow down` stops it
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # `trainflow serve` looks for runs every 2 s, not 10

    def run(self, *args, timeout=300, check=True, cwd=ROOT) -> subprocess.CompletedProcess:
        out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=self.env,
                             cwd=cwd, preexec_fn=all_cpus if "up" in args else None)
        assert not check or out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
        return out

    def up(self) -> str:
        out = self.run(BIN / "trainflow", "up", "--prefect-port", self.prefect_port, "--mlflow-port", self.mlflow_port)
        env_file = self.home / ".trainflow" / "stack" / "env"
        for line in env_file.read_text().splitlines():  # what `source .trainflow/stack/env` does
            key, value = line.removeprefix("export ").split("=", 1)
            self.env[key] = value
        return out.stdout

    def start_worker(self, cwd: Path) -> None:
        log = open(self.home / "worker.log", "w")  # noqa: SIM115 - closed with the process
        # two flow runs at a time on two cores: an interval schedule's runs queue instead of thrashing together
        self.worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "trainflow", "--limit", "2"],
                                       cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)

    def stop_worker(self) -> None:
        if self.worker is not None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:  # still finishing a flow run
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait(timeout=30)
            self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        self.run(BIN / "trainflow", "down", check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("ops"))
    try:
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def _prefect(stack: Stack):
    """A Prefect client of this test process, talking to the stack's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        yield client


def _wait_for(stack: Stack, flow_run_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    with _prefect(stack) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state_type.value in TERMINAL:
                return run
            time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout} s; worker log: "
                         f"{(stack.home / 'worker.log').read_text()[-3000:]}")


@pytest.fixture(scope="module")
def deployed(stack):
    printed = stack.up()
    assert f"http://127.0.0.1:{stack.prefect_port}" in printed and f"http://127.0.0.1:{stack.mlflow_port}" in printed
    status = stack.run(BIN / "trainflow", "status").stdout
    assert status.count("healthy") == 2
    stack.run(BIN / "prefect", "work-pool", "create", "trainflow", "--type", "process")
    stack.run(BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    stack.warm = own_warm(stack.env)  # loaded, in the worker's environment (a command's): its flow runs are forks
    stack.start_worker(cwd=stack.home)  # not the project folder: the deployments' pull step must go there
    return stack


@pytest.fixture(scope="module")
def nightly_run(deployed):
    out = deployed.run(BIN / "prefect", "deployment", "run", "training-pipeline/nightly")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    return _wait_for(deployed, flow_run_id)


def test_up_again_keeps_the_running_servers_and_their_addresses(deployed):
    again = deployed.run(BIN / "trainflow", "up").stdout  # default ports asked; the running servers answer
    assert f"127.0.0.1:{deployed.prefect_port}/api" in again and f"127.0.0.1:{deployed.mlflow_port}" in again
    env = (deployed.home / ".trainflow" / "stack" / "env").read_text()
    assert f"PREFECT_API_URL=http://127.0.0.1:{deployed.prefect_port}/api" in env
    for server in ("prefect", "mlflow"):  # the servers' own sockets: this machine only, unless --host
        pid = int((deployed.home / ".trainflow" / "stack" / f"{server}.pid").read_text().split()[0])
        assert listening(pid) == {"127.0.0.1"}, server


def test_every_deployment_is_registered_with_the_nightly_cron(deployed):
    with _prefect(deployed) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
    assert set(deployments) == {"training-pipeline/nightly", "tuning/bayesian", "compare/schedules",
                                "ensemble/bagging", "ensemble/stacking", "transfer-demo/demo", "technique-study/weekly",
                                "batch-predict/nightly"}
    scoring = deployments["batch-predict/nightly"]  # an hour after the training it scores with
    assert [s.schedule.cron for s in scoring.schedules] == ["0 3 * * *"] and scoring.work_pool_name == "trainflow"
    nightly = deployments["training-pipeline/nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.work_pool_name == "trainflow" and nightly.parameters == {"config": "configs/default.yaml"}
    # a flow run's process: the project's interpreter running flows/engine.py, in the project folder
    assert nightly.job_variables == {"command": f"{sys.executable} -m flows.engine", "working_dir": str(ROOT)}


def test_a_deployment_run_executes_on_the_worker_and_lands_in_mlflow(deployed, nightly_run):
    assert nightly_run.state_type.value == "COMPLETED", nightly_run.state
    client = MlflowClient(deployed.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("digits-cnn")
    run = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{nightly_run.id}'")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] >= 0.9
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == run.data.metrics["stopped_epoch"]
    # in the project's own store, where local runs keep theirs: read and written in place, not served
    assert str(deployed.home / ".trainflow" / "mlartifacts") in run.info.artifact_uri
    champion = client.get_model_version_by_alias("digits-cnn", "champion")
    assert champion.run_id == run.info.run_id


def test_an_interval_schedule_creates_runs_that_the_worker_executes(deployed, nightly_run):
    deployed.run(BIN / "prefect", "deployment", "schedule", "create", "training-pipeline/nightly", "--interval", "15")
    from prefect.client.schemas.filters import FlowRunFilter

    deadline = time.monotonic() + 600
    with _prefect(deployed) as client:
        try:
            while time.monotonic() < deadline:
                runs = [r for r in client.read_flow_runs() if r.auto_scheduled]
                picked = [r for r in runs if r.state_type.value != "SCHEDULED"]  # the worker took it
                if picked:
                    break
                time.sleep(2)
            assert picked, f"the worker took no scheduled run: {[(r.name, r.state_name) for r in runs]}"
        finally:  # stop scheduling, and drop the runs it queued (one is enough: every other would train too)
            schedules = client.read_deployment_schedules(nightly_run.deployment_id)
            interval = [sc for sc in schedules if getattr(sc.schedule, "interval", None)]
            for schedule in interval:
                client.delete_deployment_schedule(nightly_run.deployment_id, schedule.id)
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}})):
                client.delete_flow_run(run.id)
    finished = _wait_for(deployed, picked[0].id)
    assert finished.state_type.value == "COMPLETED" and finished.auto_scheduled, finished.state
    assert finished.deployment_id == nightly_run.deployment_id and len(schedules) == 2 and len(interval) == 1


SMALL = "tests/deployments-small.yaml"  # read by the flow runs in the project folder, as configs/ files are


def _file(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


# Every deployment but training-pipeline/nightly (run above as it is), with the small config and its own search or
# ensemble file cut down to a few trainings -> (its parameters, the registered model its run must create a version
# of).
SMALL_RUNS = {
    "tuning/bayesian": ({"config": SMALL, "search": _file("configs/search/bayesian.yaml") | {"n_trials": 2}},
                        "ops-small"),
    "compare/schedules": ({"config": SMALL}, "ops-small"),
    "ensemble/bagging": ({"config": SMALL, "ensemble": _file("configs/ensemble/bagging.yaml") | {"members": 2}},
                         "ops-small-ensemble"),
    "ensemble/stacking": ({"config": SMALL, "ensemble": _file("configs/ensemble/stacking.yaml") | {"meta": "val"}},
                          "ops-small-ensemble"),
    "transfer-demo/demo": ({"config": SMALL, "shots": 5}, "digits-5-9"),
    "technique-study/weekly": ({"config": SMALL, "only": ["l2"], "repeats": 2, "overrides": ["training.epochs=2"]},
                               None),
    # the nightly training's champion (nightly_run) scores the small config's data: the embedded digits
    "batch-predict/nightly": ({"model": "models:/digits-cnn@champion", "config": SMALL}, None),
}
RESULTS = {"technique-study/weekly": {"report.md", "report.html"},  # what a run that registers nothing leaves instead
           "batch-predict/nightly": {"summary.json", "drift.png", "confusion_matrix.png"}}


def _mlflow_runs(client: MlflowClient, flow_run_id) -> tuple[list, dict]:
    """The MLflow runs a flow run started (tagged with its id), and those with their child runs by id."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    own = client.search_runs(experiments, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    family = {r.info.run_id: r for r in own}
    for run in own:
        family |= {c.info.run_id: c for c in client.search_runs(experiments, f"tags.`mlflow.parentRunId` = "
                                                                              f"'{run.info.run_id}'")}
    return own, family


def test_every_deployment_runs_to_completed_on_the_worker_and_lands_in_mlflow(deployed, nightly_run):
    with _prefect(deployed) as client:
        started = {name: client.create_flow_run_from_deployment(client.read_deployment_by_name(name).id,
                                                                parameters=parameters)
                   for name, (parameters, _) in SMALL_RUNS.items()}
    finished = {name: _wait_for(deployed, run.id) for name, run in started.items()}
    states = {name: run.state_type.value for name, run in finished.items()}
    assert states == dict.fromkeys(SMALL_RUNS, "COMPLETED"), (deployed.home / "worker.log").read_text()[-3000:]
    forked = (deployed.warm / "log").read_text()  # each ran as a fork of the warm process, not importing anew
    missing = [name for name, run in finished.items() if f": flow run {run.id}\n" not in forked]
    assert not missing, forked[-3000:]
    assert nightly_run.state_type.value == "COMPLETED"  # the eighth, with its own parameters
    client = MlflowClient(deployed.env["MLFLOW_TRACKING_URI"])
    for name, run in finished.items():
        assert run.deployment_id == started[name].deployment_id and run.parameters["config"] == SMALL
        own, family = _mlflow_runs(client, run.id)
        assert own and {r.info.status for r in own} == {"FINISHED"}, name
        registering = [r for r in family.values() if "registered_version" in r.data.tags]
        if SMALL_RUNS[name][1] is None:  # the study and scoring register nothing; their reports are their results
            assert not registering and RESULTS[name] <= {
                a.path for r in own for a in client.list_artifacts(r.info.run_id)}, name
            continue
        assert registering, f"{name}: no model registered from its runs"
        for r in registering:  # the version exists and comes from the run that says it registered it
            version = client.get_model_version(r.data.tags["registered_model"], r.data.tags["registered_version"])
            assert version.name == SMALL_RUNS[name][1] and version.run_id == r.info.run_id, name


def test_both_uis_show_the_results_in_headless_chromium(deployed, nightly_run):
    from playwright.sync_api import expect, sync_playwright

    # what the pages must show, read from the APIs first: this run's own values, not any chart or word
    client = MlflowClient(deployed.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("digits-cnn").experiment_id
    run = client.search_runs([experiment], f"tags.`prefect.flow_run_id` = '{nightly_run.id}'")[0]
    last_val_accuracy = run.data.metrics["val_accuracy"]  # its latest value: the last epoch's
    champion = client.get_model_version_by_alias("digits-cnn", "champion").version
    with _prefect(deployed) as prefect:
        flow_run = prefect.read_flow_run(nightly_run.id)
        deployment = prefect.read_deployment(flow_run.deployment_id).name
    mlflow_ui, prefect_ui = deployed.env["MLFLOW_TRACKING_URI"], deployed.env["PREFECT_API_URL"].removesuffix("/api")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs")
        expect(page.get_by_text("digits-cnn", exact=True).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text(run.info.run_name).first).to_be_attached(timeout=60_000)
        page.screenshot(path=SCREENSHOTS / "mlflow-experiment.png")
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{run.info.run_id}")  # its metrics table
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="val_accuracy", exact=True))
        shown = page.evaluate("value => String(value)", last_val_accuracy)  # as JavaScript prints it: 1, not 1.0
        expect(row.get_by_role("cell").last).to_have_text(shown, timeout=60_000)
        page.screenshot(path=SCREENSHOTS / "mlflow-run.png")
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{run.info.run_id}/model-metrics")
        page.get_by_placeholder("Search metric charts").fill("val_accuracy")
        expect(page.get_by_text("val_accuracy", exact=True).first).to_be_visible(timeout=60_000)
        expect(page.locator("canvas, svg.main-svg, .js-plotly-plot").first).to_be_visible(timeout=60_000)
        page.screenshot(path=SCREENSHOTS / "mlflow-run-metrics.png")
        page.goto(f"{mlflow_ui}/#/models/digits-cnn")
        holder = page.get_by_role("row").filter(has_text="@ champion")  # the version row with the alias chip
        expect(holder).to_have_count(1, timeout=60_000)
        expect(holder.get_by_role("link", name=f"Version {champion}", exact=True)).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "mlflow-registered-model.png")
        page.goto(f"{mlflow_ui}/#/models/digits-cnn/versions/{champion}")  # its model card, the description
        expect(page.get_by_role("heading", name=f"Model card: digits-cnn version {champion}", exact=True)
               ).to_be_visible(timeout=60_000)
        accuracy = client.get_run(client.get_model_version("digits-cnn", champion).run_id).data.metrics["test_accuracy"]
        expect(page.get_by_role("cell", name=re.compile(rf"^{accuracy:.4f} \[")).first).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "mlflow-model-card.png", full_page=True)
        page.goto(f"{prefect_ui}/runs/flow-run/{nightly_run.id}")
        heading = page.locator(".page-heading")  # the flow run's own name, state badge and deployment
        expect(heading).to_contain_text(flow_run.name, timeout=60_000)
        expect(heading.locator(".state-badge")).to_have_text(flow_run.state.name)
        expect(heading).to_contain_text(deployment)
        page.screenshot(path=SCREENSHOTS / "prefect-flow-run.png")
        browser.close()
    shots = sorted(p.name for p in SCREENSHOTS.glob("*.png"))
    assert {"mlflow-experiment.png", "mlflow-run.png", "mlflow-run-metrics.png", "mlflow-registered-model.png",
            "mlflow-model-card.png", "prefect-flow-run.png"} <= set(shots)
    (SCREENSHOTS / "screenshots.json").write_text(json.dumps({"run_id": run.info.run_id, "flow_run_id":
                                                              str(nightly_run.id), "screenshots": shots}))


def test_four_flows_at_once_all_complete_and_the_champion_is_the_best(deployed):
    epochs = 3
    runs = [subprocess.Popen([BIN / "trainflow", "run", "--json", "--set", "name=concurrent", "--set", "model.name=mlp",
                              "--set", f"training.epochs={epochs}", "--set", "training.early_stopping.enabled=false",
                              "--set", f"training.seed={seed}", "--set", "register.min_test_accuracy=0",
                              "--set", "register.gate=delta"],  # delta: the alias ends on the best accuracy
                             cwd=deployed.home, env=deployed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for seed in range(4)]
    outs = [(r.communicate(timeout=600), r.returncode) for r in runs]
    assert [code for _, code in outs] == [0] * 4, [err[-2000:] for (_, err), _ in outs]
    summaries = [json.loads(out) for (out, _), _ in outs]
    client = MlflowClient(deployed.env["MLFLOW_TRACKING_URI"])
    for summary in summaries:  # every run has every epoch's metrics and its final ones
        run = client.get_run(summary["run_id"])
        assert run.info.status == "FINISHED"
        assert {"test_accuracy", "test_loss", "test_f1", "best_epoch", "train_seconds"} <= set(run.data.metrics)
        for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == list(range(1, epochs + 1))
    versions = client.search_model_versions("name = 'concurrent'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    best = max(s["metrics"]["test_accuracy"] for s in summaries)
    champion = client.get_model_version_by_alias("concurrent", "champion")
    assert float(champion.tags["test_accuracy"]) == pytest.approx(best, abs=1e-6), [
        (v.version, v.tags.get("test_accuracy"), v.aliases) for v in versions]


def test_serve_runs_the_same_deployments_without_a_worker(deployed, nightly_run):
    deployed.stop_worker()  # from here on only `trainflow serve` executes runs
    clash = deployed.run(BIN / "trainflow", "serve", "--only", "training-pipeline/nightly", check=False)
    assert clash.returncode == 2 and "is deployed to work pool 'trainflow'" in clash.stderr
    deployed.run(BIN / "prefect", "deployment", "delete", "training-pipeline/nightly")
    log_file = deployed.home / "serve.log"
    log = open(log_file, "w")  # noqa: SIM115 - closed with the process
    serving = subprocess.Popen([BIN / "trainflow", "serve", "--only", "training-pipeline/nightly"], cwd=ROOT,
                               env=deployed.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # a background job
    try:
        deadline = time.monotonic() + 120
        while "polling for their runs" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(1)
        with _prefect(deployed) as client:
            nightly = client.read_deployment_by_name("training-pipeline/nightly")
            assert nightly.work_pool_name is None and [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
            flow_run = client.create_flow_run_from_deployment(nightly.id, parameters={"config": SMALL})
        deadline, started = time.monotonic() + 120, []
        while not started and time.monotonic() < deadline:  # the flow run's process, serve's child
            started = psutil.Process(serving.pid).children()
            time.sleep(0.2)
        # its way to end with serve, even a killed one (test_processes.py): serve's pid where it looks
        assert started and started[0].environ().get("TRAINFLOW_SERVED_BY") == str(serving.pid)
        assert _wait_for(deployed, flow_run.id).state_type.value == "COMPLETED", log_file.read_text()[-3000:]
    finally:  # started ignoring SIGINT, as a script's background job does: `kill -INT` stops it all the same
        os.kill(serving.pid, signal.SIGINT)
        code = serving.wait(timeout=60)
    said = log_file.read_text()
    assert code == 0 and said.splitlines()[-1] == "stopped (SIGINT)", said[-3000:]


def test_a_server_that_cannot_start_stops_the_whole_stack(tmp_path):
    stack = Stack(tmp_path)
    out = stack.run(BIN / "trainflow", "up", "--prefect-port", stack.prefect_port, "--mlflow-port",
                    stack.mlflow_port, "--mlflow-backend", "bogus://nothing", check=False)
    assert out.returncode == 2 and "error: mlflow server exited while starting; its log:" in out.stderr
    status = stack.run(BIN / "trainflow", "status", check=False)
    servers = [line.split()[:2] for line in status.stdout.splitlines() if line.startswith(("prefect ", "mlflow "))]
    assert servers[:2] == [["prefect", "stopped"], ["mlflow", "stopped"]], status.stdout
    assert status.returncode == 0 and "no stack is running" in status.stdout, status.stdout  # none left half up
    # the Prefect server it started stopped too


def test_serve_refuses_without_a_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "TRAINFLOW_HOME": str(tmp_path / ".trainflow")}
    out = subprocess.run([BIN / "trainflow", "serve"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 2 and "serve needs a Prefect server" in out.stderr

