"""`trainflow models`, `promote` and `rollback` as real processes on a real MLflow store: what they print, what
they move, what they refuse (exit 2, one line), and the history they leave."""

import json
import subprocess
import uuid

import mlflow
from conftest import TRAINFLOW, cli_env
from mlflow import MlflowClient

from tasks.registry import aliases


def _store(tmp_path) -> tuple[dict, MlflowClient]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return cli_env(tmp_path) | {"MLFLOW_TRACKING_URI": uri}, MlflowClient(uri)


def _trainflow(env, *args):
    return subprocess.run([TRAINFLOW, *args], capture_output=True, text=True, env=env, timeout=120)


def test_promote_rollback_and_the_history_they_leave(tmp_path):
    env, client = _store(tmp_path)
    name = f"m-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    for accuracy in ("0.9100", "0.9500", "0.9300"):
        version = client.create_model_version(name, source="file:///nowhere", run_id=None).version
        client.set_model_version_tag(name, version, "test_accuracy", accuracy)
        client.set_model_version_tag(name, version, "gate", "promoted")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:  # the first two moves in this process (the same code the command runs), to spare two processes
        for version, reason in (("1", "first"), ("2", "better on the new scans")):
            aliases.promote(name, int(version), reason=reason)
    finally:
        mlflow.set_tracking_uri(before)
    out = _trainflow(env, "promote", name, "3", "--reason", "the latest")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"@champion of {name}: version 2 -> version 3")
    again = _trainflow(env, "promote", name, "3")
    assert again.returncode == 0 and again.stdout.strip() == f"@champion of {name} already on version 3: nothing moved"
    back = _trainflow(env, "rollback", name, "--reason", "drift", "--json")
    assert back.returncode == 0, back.stderr
    move = json.loads(back.stdout)
    assert (move["from_version"], move["to_version"], move["by"]) == (3, 2, "rollback") and move["undoes"]
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2
    listing = _trainflow(env, "models", name).stdout.splitlines()
    assert listing[0] == f"{name}: @champion -> version 2"
    assert listing[1].split() == ["version", "created", "(UTC)", "test_accuracy", "gate", "aliases", "source", "model",
                                  "input", "run"]
    assert [row.split()[0] for row in listing[2:]] == ["3", "2", "1"]
    assert listing[3].split()[3:6] == ["0.9500", "promoted", "@champion"]
    history = _trainflow(env, "models", name, "--history").stdout.splitlines()
    assert history[0] == name and [line.split()[3:6] for line in history[2:]] == [
        ["-", "1", "promote"], ["1", "2", "promote"], ["2", "3", "promote"], ["3", "2", "rollback"]]
    assert history[-1].endswith("(promote, " + history[-2].split()[0] + " " + history[-2].split()[1] + " UTC): drift")
    moves = json.loads(_trainflow(env, "models", name, "--history", "--json").stdout)[name]
    assert [m["reason"] for m in moves][:2] == ["trainflow promote: first",
                                                "trainflow promote: better on the new scans"]


def test_what_they_refuse_is_one_line_and_moves_nothing(tmp_path):
    env, client = _store(tmp_path)
    client.create_registered_model("solo")
    client.create_model_version("solo", source="file:///nowhere", run_id=None)
    cases = {("promote", "solo", "4"): "error: solo has no version 4; its versions: 1",
             ("rollback", "solo"): "error: solo has no alias @champion; its aliases: none",
             ("models", "nobody"): "error: no registered model 'nobody'; registered: solo",
             ("card", "runs:/" + "0" * 32): "error: runs:/" + "0" * 32 + ": a model card is made for a registered "
                                           "version; give NAME, NAME@ALIAS or NAME/VERSION",
             ("promote", "solo", "0"): "error: argument VERSION: expected a whole number of at least 1, got '0' "
                                       "(`trainflow promote --help` shows the options)"}
    for args, message in cases.items():
        out = _trainflow(env, *args)
        assert (out.returncode, out.stderr.strip(), out.stdout) == (2, message, ""), args
    assert client.get_registered_model("solo").aliases == {}
