"""Scaling out for real: fan-out flows on a 2-worker Dask LocalCluster and on an existing Dask scheduler with
worker processes, a tuning study shared through PostgreSQL by two concurrent `trainflow tune` processes, and
`trainflow up --postgres` (Prefect and MLflow servers on PostgreSQL)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import TRAINFLOW, all_cpus, cli_env, warm_ready
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ports import free_port

from trainlib.config import load_config, validate
from trainlib.ensemble import EnsembleConfig
from trainlib.tuning import SearchConfig

BIN = Path(sys.executable).parent
MLP = ["model.name=mlp", "model.hidden=[32]", "training.epochs=2", "training.early_stopping.enabled=false"]
GRID = {"optimizer.name": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.2}}


def _children(client: MlflowClient, parent_run_id: str):
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def _tracked_elsewhere(runs, steps: list[int]) -> set[str]:
    """Each run finished with one metric point per epoch; -> the processes (host:pid) that ran them."""
    client = MlflowClient()
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == steps
    processes = {run.data.tags["trainflow.process"] for run in runs}
    assert f"{socket.gethostname()}:{os.getpid()}" not in processes  # not in this (the flow's) process
    return processes


def _task_runs(parent_run_id: str, name: str) -> list[str]:
    """States of the Prefect task runs called `name` of the flow run behind MLflow run `parent_run_id`."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = MlflowClient().get_run(parent_run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.state_type.value for r in runs if r.name.startswith(name))


def test_tuning_on_a_dask_cluster_is_tracked_as_with_threads(prefect_api):
    from flows.tuning import tuning_flow

    search = validate({"strategy": "random", "n_trials": 4, "pruner": "median", "prune_after": 1, "max_parallel": 2,
                       "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}},
                      SearchConfig)
    out = tuning_flow(load_config(None, ["name=dask-tune", *MLP]), search, runner="dask").json()
    client = MlflowClient()
    trials = [r for r in _children(client, out["run_id"]) if r.data.tags["trainflow.kind"] == "trial"]
    assert len(trials) == 4 and out["trials"]["complete"] + out["trials"]["pruned"] == 4
    complete = [r for r in trials if r.data.tags["trial.state"] == "complete"]
    _tracked_elsewhere(complete, [1, 2])
    assert len({r.data.tags["trainflow.process"] for r in trials}) == 2  # both Dask workers trained trials
    assert _task_runs(out["run_id"], "trial") == ["COMPLETED"] * 4
    assert out["registered_model"] == "dask-tune" and out["version"] == 1


def test_bagging_on_a_dask_cluster_is_tracked_as_with_threads(prefect_api):
    from flows.ensemble import ensemble_pipeline

    bagging = validate({"method": "bagging", "members": 3, "max_parallel": 2}, EnsembleConfig)
    out = ensemble_pipeline(load_config(None, ["name=dask-bag", *MLP]), bagging, runner="dask").json()
    members = [r for r in _children(MlflowClient(), out["run_id"]) if r.data.tags["trainflow.kind"] == "member"]
    assert len(members) == 3 and all(m["state"] == "complete" for m in out["members"])
    assert _tracked_elsewhere(members, [1, 2])
    assert _task_runs(out["run_id"], "member") == ["COMPLETED"] * 3
    assert out["registered_model"] == "dask-bag-ensemble" and out["metrics"]["test_accuracy"] > 0.8


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_compare_on_an_existing_dask_scheduler_and_its_worker_processes(tmp_path):
    port, env = free_port(), cli_env(tmp_path)
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    started = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-dashboard"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)]
    try:  # workers as the README starts them, seeing the same folder (TRAINFLOW_HOME), so the same MLflow store
        deadline = time.monotonic() + 60  # the scheduler listening, as a user starts one before using it
        while not _listening(port):
            assert time.monotonic() < deadline and started[0].poll() is None, (tmp_path / "dask.log").read_text()
            time.sleep(0.1)
        started += [subprocess.Popen([BIN / "dask", "worker", f"tcp://127.0.0.1:{port}", "--no-nanny", "--nthreads",
                                      "1", "--no-dashboard", "--host", "127.0.0.1"], env=env, cwd=tmp_path, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True) for _ in range(2)]
        out = subprocess.run([TRAINFLOW, "compare", "--vary", "optimizer.name=adam,sgd", "--runner",
                              f"dask://127.0.0.1:{port}", "--json", *[a for s in MLP for a in ("--set", s)]],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr + (tmp_path / "dask.log").read_text()
        summary = json.loads(out.stdout)
        client = MlflowClient(f"sqlite:///{tmp_path / '.trainflow' / 'mlflow.db'}")
        variants = [client.get_run(r) for r in summary["children"]]
        pids = {int(r.data.tags["trainflow.process"].rsplit(":", 1)[1]) for r in variants}
        assert len(variants) == 2 and all(r.info.status == "FINISHED" for r in variants)
        assert pids <= {p.pid for p in started[1:]}  # trained in the dask workers' processes
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        log.close()



@pytest.mark.parametrize("runner, message", [
    ("spark", "--runner 'spark': not a task runner; valid: thread | dask | dask://host:port"),
    ("dask://127.0.0.1:9", "--runner dask://127.0.0.1:9: the Dask scheduler does not answer"),
])
def test_a_bad_or_unreachable_runner_is_one_message(tmp_path, runner, message):
    started = time.monotonic()
    out = subprocess.run([TRAINFLOW, "compare", "--vary", "optimizer.name=adam,sgd", "--runner", runner,
                          *[a for s in MLP for a in ("--set", s)]], capture_output=True, text=True, timeout=300,
                         env=cli_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), out.stderr
    assert time.monotonic() - started < 120


def _tune_in_background(folder: Path, search_file: Path) -> subprocess.Popen:
    folder.mkdir()
    return subprocess.Popen([TRAINFLOW, "tune", "--search", str(search_file), "--json", "--set", "name=shared",
                             *[a for s in MLP for a in ("--set", s)], "--set", "training.epochs=30"],  # overlap
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(folder), cwd=folder)


def _holding(folder: Path, secret: str) -> list[Path]:
    """Every file under `folder` whose bytes hold `secret`."""
    return [f for f in folder.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]


def test_a_study_shared_through_postgresql_by_two_processes_has_every_trial_once(tmp_path, postgres):
    search_file = tmp_path / "search.yaml"
    search_file.write_text(yaml.safe_dump({"strategy": "grid", "pruner": "none", "max_parallel": 2, "seed": 0,
                                           "storage": postgres, "study_name": "shared-grid", "space": GRID}))
    warm_ready(tmp_path)  # both start at once, as forks: neither runs the whole study before the other has begun
    first, second = (_tune_in_background(tmp_path / name, search_file) for name in ("a", "b"))
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    for process, (stdout, stderr) in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, stderr
        assert "s3cret-pw" not in stdout + stderr  # the password stays out of what they print
    study = optuna.load_study(study_name="shared-grid", storage=postgres)
    combos = sorted((t.params["optimizer.name"], t.params["model.dropout"]) for t in study.trials)
    assert combos == sorted((o, d) for o in ("adam", "sgd", "rmsprop") for d in (0.0, 0.2))  # each exactly once
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    tracked = {}  # trial run id -> the process's MLflow store that has it
    for name in ("a", "b"):
        client = MlflowClient(f"sqlite:///{tmp_path / name / '.trainflow' / 'mlflow.db'}")
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            if run.data.tags.get("trainflow.kind") == "trial":
                assert run.info.run_id not in tracked
                tracked[run.info.run_id] = name
    assert sorted(tracked) == sorted(t.user_attrs["run_id"] for t in study.trials)
    # both processes ran trials of the one study
    assert set(tracked.values()) == {"a", "b"}, [err[-1500:] for _, err in outputs]
    # nor in any store, log or file of either project (the search file the test wrote holds it, as a user's would)
    assert _holding(tmp_path / "a", "s3cret-pw") + _holding(tmp_path / "b", "s3cret-pw") == []


@pytest.mark.parametrize("url, message", [
    ("not a url", "--postgres not a url: not a database URL (postgresql://user:password@host/db)"),
    ("sqlite:///x.db", "--postgres sqlite:///x.db: give a PostgreSQL URL with a database"),
    ("postgresql://u:s3cret-pw@127.0.0.1:5432/" + "d" * 60, f"--postgres postgresql://u:***@127.0.0.1:5432/"
     f"{'d' * 60}: the database name '{'d' * 60}' is too long for <db>_prefect and <db>_mlflow (63 bytes at most)"),
    ("postgresql://u:s3cret-pw@127.0.0.1:5432/db?sslrootcert=ca.pem&connect_timeout=5",
     "--postgres postgresql://u:***@127.0.0.1:5432/db?sslrootcert=ca.pem&connect_timeout=5: connect_timeout, "
     "sslrootcert cannot be passed on to Prefect's server (its driver, asyncpg, has no such setting)"),
    ("postgresql://u:s3cret-pw@127.0.0.1:9/db", "--postgres postgresql://u:***@127.0.0.1:9/db: cannot prepare "
     "Prefect's and MLflow's databases (connection failed"),
])
def test_a_bad_postgres_url_is_one_message_and_starts_nothing(tmp_path, url, message):
    out = subprocess.run([TRAINFLOW, "up", "--postgres", url], capture_output=True, text=True, timeout=120,
                         env=cli_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "s3cret-pw" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip().splitlines()[0]]
    assert out.stderr.startswith(f"error: {message}"), out.stderr
    assert not (tmp_path / ".trainflow" / "stack" / "prefect.pid").exists()


def test_the_stack_on_postgresql(tmp_path, postgres):
    env = cli_env(tmp_path) | {"PREFECT_HOME": str(tmp_path / "prefect-cli")}
    ports = [str(free_port()), str(free_port())]
    # sslmode is libpq's name; Prefect's asyncpg connection gets it as `ssl`
    up = subprocess.run([TRAINFLOW, "up", "--postgres", f"{postgres}?sslmode=prefer", "--prefect-port", ports[0],
                         "--mlflow-port", ports[1]], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
                        preexec_fn=all_cpus)
    try:
        assert up.returncode == 0, up.stderr
        assert "s3cret-pw" not in up.stdout + up.stderr
        stack_env = tmp_path / ".trainflow" / "stack" / "env"
        for line in stack_env.read_text().splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value
        run = subprocess.run([TRAINFLOW, "run", "--json", "--set", "name=on-postgres",
                              *[a for s in MLP for a in ("--set", s)]], capture_output=True, text=True,
                             timeout=600, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        run_id = json.loads(run.stdout)["run_id"]
        base = sqlalchemy.engine.make_url(postgres)
        mlflow_db = sqlalchemy.create_engine(base.set(database=f"{base.database}_mlflow"))
        prefect_db = sqlalchemy.create_engine(base.set(database=f"{base.database}_prefect"))
        with mlflow_db.connect() as db:  # MLflow's server keeps the run in its PostgreSQL database
            assert db.execute(sqlalchemy.text("SELECT status FROM runs WHERE run_uuid = :r"), {"r": run_id}).scalar() \
                == "FINISHED"
        with prefect_db.connect() as db:  # and Prefect's server its flow run
            states = db.execute(sqlalchemy.text("SELECT state_type FROM flow_run")).scalars().all()
            assert states == ["COMPLETED"]
        # the database password: in no file of the project (stores, the servers' logs, the stack's env file), in
        # nothing printed, and in none of the text the two servers keep in their databases
        assert _holding(tmp_path, "s3cret-pw") == [] and "s3cret-pw" not in run.stdout + run.stderr
        for db, tables in ((mlflow_db, ("params", "tags", "experiment_tags", "latest_metrics")),
                           (prefect_db, ("flow_run", "log", "task_run", "artifact"))):
            with db.connect() as connection:
                for table in tables:
                    rows = connection.execute(sqlalchemy.text(f"SELECT * FROM {table}")).all()
                    assert not any("s3cret-pw" in str(row) for row in rows), table
        mlflow_db.dispose()
        prefect_db.dispose()
    finally:
        subprocess.run([TRAINFLOW, "down"], capture_output=True, timeout=120, env=env, cwd=tmp_path)
