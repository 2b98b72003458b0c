"""Security rules: credentials in URLs never reach MLflow, Prefect or the terminal; checkpoints load with
weights_only; YAML loads with safe_load."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import TRAINFLOW, cli_env
from mlflow import MlflowClient
from ports import free_port

from trainlib.redact import redact

ROOT = Path(__file__).resolve().parents[1]
URL = "postgresql://trainer:pa55word@db.internal:5432/optuna"


@pytest.mark.parametrize("text, expected", [
    (URL, "postgresql://trainer:***@db.internal:5432/optuna"),
    ("storage: https://bot:ghp_tok3n@mlflow.example.com/ and sqlite:///x.db",
     "storage: https://bot:***@mlflow.example.com/ and sqlite:///x.db"),
    ("postgresql+asyncpg://u:p%40ss@h/db", "postgresql+asyncpg://u:***@h/db"),
    ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),  # a port is not a password
    ("http://user@host/x", "http://user@host/x"),  # no password: nothing to hide
    ("no url here: a:b@c", "no url here: a:b@c"),
])
def test_redact_hides_only_passwords(text, expected):
    assert redact(text) == expected


def test_credentials_never_reach_the_tracking_store(home):
    from tasks import tracking

    run_id = tracking.start_run("redaction", "redaction", {"search.storage": URL, "search.n_trials": 3},
                                {"note": f"shared study in {URL}"})
    log = tracking.RunLogger(run_id)
    log.log_text(f"storage: {URL}\n", "search.yaml")
    log.log_dict({"storage": URL, "nested": [URL]}, "search.json")
    log.set_tags({"database": URL})
    client = MlflowClient()
    run = client.get_run(run_id)
    recorded = json.dumps(run.data.params) + json.dumps(run.data.tags)
    recorded += Path(client.download_artifacts(run_id, "search.yaml")).read_text()
    recorded += Path(client.download_artifacts(run_id, "search.json")).read_text()
    assert "pa55word" not in recorded
    assert run.data.params["search.storage"] == "postgresql://trainer:***@db.internal:5432/optuna"
    assert run.data.params["search.n_trials"] == "3"


def test_a_study_database_password_is_nowhere_in_the_stores_or_the_output(tmp_path):
    port = free_port()  # where no database answers
    (tmp_path / "search.yaml").write_text(f"strategy: random\nn_trials: 2\npruner: none\n"
                                          f"storage: postgresql://trainer:pa55word@127.0.0.1:{port}/optuna\n"
                                          "space:\n  optimizer.lr: {type: float, low: 0.001, high: 0.01}\n")
    out = subprocess.run([TRAINFLOW, "tune", "--search", "search.yaml", "--set", "model.name=mlp", "--set",
                          "training.epochs=1", "--set", "name=secret-study"], capture_output=True, text=True,
                         timeout=300, env=cli_env(tmp_path) | {"TRAINFLOW_WARM_MINUTES": "0"}, cwd=tmp_path)
    # (a temporary Prefect API on the project's prefect.db: the warm process's writes the session's)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"error: search.storage postgresql://trainer:***@127.0.0.1:{port}/optuna: " in out.stderr
    assert "pa55word" not in out.stdout + out.stderr
    home = tmp_path / ".trainflow"  # Prefect's database (flow run parameters, logs), MLflow's, every file
    files = [f for f in home.rglob("*") if f.is_file()]
    assert any(f.name == "prefect.db" for f in files) and any(f.name == "mlflow.db" for f in files)
    assert [f for f in files if b"pa55word" in f.read_bytes()] == []
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    study = client.search_runs([client.get_experiment_by_name("secret-study").experiment_id])[0]
    assert study.data.params["search.storage"] == f"postgresql://trainer:***@127.0.0.1:{port}/optuna"
    assert study.info.status == "FAILED"


def _sources():
    for folder in ("trainlib", "tasks", "flows", "deployments"):
        yield from (ROOT / folder).rglob("*.py")


def test_checkpoints_load_only_with_weights_only():
    calls = [(p.name, line.strip()) for p in _sources() for line in p.read_text().splitlines()
             if re.search(r"\btorch\.load\(", line)]
    assert calls, "no torch.load call found: the check looks in the wrong place"
    assert all("weights_only=True" in line for _, line in calls), calls


def test_yaml_loads_only_with_safe_load():
    unsafe = [(p.name, line.strip()) for p in _sources() for line in p.read_text().splitlines()
              if re.search(r"\byaml\.(load|unsafe_load|full_load)\(", line)]
    assert unsafe == []
    assert any("yaml.safe_load(" in p.read_text() for p in _sources())


# Every name looked up and every address connected to, by each Python process started with this folder on its path
# (sitecustomize runs at start-up): Python's audit events, so nothing a library does on its own thread escapes.
WATCH = """import json, sys
def _watch(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        host = args[0]
    elif event in ("socket.connect", "socket.sendto"):
        host = args[-1][0] if isinstance(args[-1], tuple) else None  # a Unix socket's path: not the network
    else:
        return
    if host is not None:
        with open({log!r}, "a") as f:
            f.write(json.dumps([event, host.decode() if isinstance(host, bytes) else str(host)]) + "\\n")
sys.addaudithook(_watch)
"""
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "None"}  # None: getaddrinfo of a bind to any address


def test_a_clean_environment_sends_nothing_and_looks_nothing_up_beyond_this_machine(tmp_path):
    """README: no telemetry, no network look-ups. A run, a command forked from the warm process it leaves (which
    holds the project's Prefect API), in an environment with no variable that turns them off (none of the suite's,
    not even PYTEST_CURRENT_TEST, which MLflow reads as a reason to stay quiet)."""
    watch, project, log = tmp_path / "watch", tmp_path / "project", tmp_path / "lookups.jsonl"
    watch.mkdir()
    project.mkdir()
    (watch / "sitecustomize.py").write_text(WATCH.format(log=str(log)))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PYTHONPATH": f"{watch}:{ROOT}"}  # this checkout first, as every trainflow process of the suite
    commands = [["run", "--set", "training.epochs=1"], ["models"], ["down"]]
    for command in commands:
        done = subprocess.run([TRAINFLOW, *command], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(event == "socket.connect" for event, _ in seen)  # the watch works: the commands reach their API
    assert sorted({host for _, host in seen} - LOOPBACK) == [], seen
