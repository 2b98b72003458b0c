"""The `trainflow` command in real subprocesses: JSON output, exit codes, readable errors, the UI."""

import json
import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import REGISTRY_NOTICES, TRAINFLOW, cli_env, listening
from mlflow import MlflowClient
from ports import free_port


def _trainflow(tmp_path, *args, timeout=600):
    return subprocess.run([TRAINFLOW, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(tmp_path),
                          cwd=tmp_path)


def test_run_json_prints_exactly_one_json_object(tmp_path):
    out = _trainflow(tmp_path, "run", "--json", "--set", "training.epochs=2", "--set", "name=cli-json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # the whole of stdout is the one object
    assert {"run_id", "experiment", "metrics", "model_uri", "registered_model", "version", "alias",
            "gate"} <= set(summary)
    assert summary["experiment"] == "cli-json" and summary["alias"] == "champion" and summary["version"] == 1
    assert type(summary["version"]) is int and all(type(v) in (int, float) for v in summary["metrics"].values())
    assert {"test_accuracy", "test_f1", "best_val_loss", "best_epoch"} <= set(summary["metrics"])
    assert "Traceback" not in out.stderr and "Error" not in out.stderr
    assert (tmp_path / ".trainflow" / "mlflow.db").exists()  # local by default, under .trainflow/


@pytest.mark.parametrize("args, message", [
    (["--set", "optimizer.lrr=0.1"], "optimizer.lrr: unknown key (did you mean 'optimizer.lr'?)"),
    (["--set", "optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0 (got -1)"),
    (["--set", "model.name=vgg"], "unknown model 'vgg'; valid: cnn, cnn1d, gru, lstm, mlp, resnet18"),
    (["--set", "epochs"], "argument --set: expected KEY=VALUE as one word, e.g. --set optimizer.lr=0.01"),
    (["--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["--set", "transfer.source=model.pt"], "transfer.source is set, but `trainflow run` trains from fresh weights"),
])
def test_bad_input_exits_2_with_one_readable_line(tmp_path, args, message):
    out = _trainflow(tmp_path, "run", "--json", *args, timeout=120)
    assert out.returncode == 2
    assert out.stdout == "" and message in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error:")


def test_a_diverging_loss_exits_1_with_one_failed_line_and_registers_nothing(tmp_path):
    out = _trainflow(tmp_path, "run", "--json", "--set", "name=cli-nan", "--set", "model.name=mlp", "--set",
                     "training.epochs=2", "--set", "optimizer.name=sgd", "--set", "optimizer.lr=1e12")
    assert out.returncode == 1, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    failed = [line for line in out.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith("failed: TrainingError: "), out.stderr
    assert re.search(r"loss became NaN or infinite in epoch 1 at batch \d+", failed[0]), out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/.trainflow/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cli-nan").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"] and "NaN" in runs[0].data.tags["failure_reason"]
    assert client.search_registered_models() == []  # nothing registered


def test_a_missing_data_file_fails_before_anything_starts(tmp_path):
    out = _trainflow(tmp_path, "run", "--set", "data.source=csv", "--set", "data.path=missing.csv",
                     "--set", "model.name=mlp")
    assert out.returncode == 2, out.stderr
    assert f"error: data.path: no such file or folder: {tmp_path / 'missing.csv'} (" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / ".trainflow" / "mlflow.db").exists()  # no MLflow run, FAILED or other
    assert not (tmp_path / ".trainflow" / "prefect" / "temporary-api.log").exists()  # no Prefect API started


def test_ui_serves_the_local_store(tmp_path):
    port = free_port()
    proc = subprocess.Popen([TRAINFLOW, "ui", "--port", str(port)], env=cli_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status != 200:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert "MLflow" in page.read().decode()
        assert listening(proc.pid) == {"127.0.0.1"}  # bound to this machine only, unless --host
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_a_run_in_a_log_has_its_summary_on_stdout_and_a_line_per_epoch(tmp_path):
    out = _trainflow(tmp_path, "run", "--set", "training.epochs=3", "--set", "model.channels=[8]",
                     "--set", "name=cli-log")  # both streams are pipes here, as in `trainflow run > log 2>&1`
    assert out.returncode == 0, out.stderr
    summary = out.stdout.splitlines()
    assert summary[0].startswith("done: test accuracy 0.") and len(summary) <= 4, out.stdout
    url = r"MLflow run [0-9a-f]{32}: http://\S+/runs/[0-9a-f]{32}( \(.*\))?"  # whole, on one line
    assert any(re.fullmatch(url, line) for line in summary), out.stdout
    epochs = [line for line in out.stderr.splitlines() if line.startswith("training ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], out.stderr
    assert all(re.search(r"loss \d\.\d{4}  acc \d\.\d{4}  val_loss \d\.\d{4}  val_acc \d\.\d{4}  lr 0\.001 ", line)
               for line in epochs), out.stderr
    for notice in REGISTRY_NOTICES:  # MLflow's own lines are not printed
        assert notice not in out.stdout + out.stderr, out.stderr


def test_the_cache_is_listed_and_pruned_by_age_and_the_next_run_recomputes_what_was_pruned(tmp_path):
    small = ["run", "--no-register", "--set", "training.epochs=1", "--set", "model.channels=[8]"]
    assert _trainflow(tmp_path, *small).returncode == 0
    listed = _trainflow(tmp_path, "cache").stdout.splitlines()
    kinds = sorted(line.split("days")[1].split()[0] for line in listed[:-1])
    assert kinds == ["cache", "dataset", "manifest", "normalization"], listed  # "cache records"
    assert re.fullmatch(r"4 entries, [\d.]+ KiB \(trainflow cache --prune removes them\)", listed[-1]), listed
    cache = tmp_path / ".trainflow" / "cache"
    [dataset] = cache.glob("dataset-*")
    old = time.time() - 40 * 86400
    for path in [dataset, *dataset.iterdir()]:  # unused for 40 days
        os.utime(path, (old, old))
    pruned = _trainflow(tmp_path, "cache", "--prune", "--older-than", "30")
    said = pruned.stdout.splitlines()[-1]
    assert pruned.returncode == 0 and said.startswith("removed 1 entries older than 30 days"), pruned.stdout
    assert not dataset.exists() and list(cache.glob("manifest-*")) and not (cache / "results").exists()
    again = _trainflow(tmp_path, *small)  # no cache record is left pointing at the pruned dataset
    assert again.returncode == 0, again.stderr
    assert len(list(cache.glob("dataset-*"))) == 1
    assert _trainflow(tmp_path, "cache", "--older-than", "30").stdout.startswith("nothing older than 30 days")


def test_tune_json_has_the_study_and_its_children(tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text("strategy: grid\npruner: none\nspace:\n"
                      "  optimizer.name: {type: categorical, choices: [adam, rmsprop]}\n")
    out = _trainflow(tmp_path, "tune", "--json", "--search", str(search), "--set", "training.epochs=2",
                     "--set", "name=cli-tune", "--set", "model.name=mlp")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert {"run_id", "experiment", "metrics", "model_uri", "registered_model", "version", "alias", "gate",
            "children", "best_trial"} <= set(summary)
    assert len(summary["children"]) == 3 and summary["trials"] == {"complete": 2, "pruned": 0, "fail": 0}
    assert summary["best_trial"]["params"]["optimizer.name"] in {"adam", "rmsprop"}


def test_ensemble_json_has_the_members_and_the_ensemble(tmp_path):
    out = _trainflow(tmp_path, "ensemble", "--json", "--method", "voting", "--member", "model.hidden=[32]",
                     "--member", "optimizer.name=sgd optimizer.lr=0.05", "--set", "training.epochs=2",
                     "--set", "name=cli-ensemble", "--set", "model.name=mlp", "--set", "register.min_test_accuracy=0")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert {"run_id", "experiment", "metrics", "model_uri", "registered_model", "version", "alias", "gate",
            "children", "members", "method", "best_member"} <= set(summary)
    assert summary["method"] == "voting" and len(summary["children"]) == 2
    assert [m["member"] for m in summary["members"]] == ["member 1: hidden=[32]", "member 2: sgd lr=0.05"]
    assert {"test_accuracy", "val_accuracy", "best_member_test_accuracy"} <= set(summary["metrics"])
    assert summary["alias"] == "champion" and "Traceback" not in out.stderr


def test_transfer_json_from_a_model_file(tmp_path):
    from trainlib.models import build, save_model

    save_model(tmp_path / "source.pt", build("mlp", (1, 8, 8), 10, None, hidden=[32]), classes=list("0123456789"))
    out = _trainflow(tmp_path, "transfer", "--json", "--source", "source.pt", "--strategy", "feature_extraction",
                     "--shots", "20", "--set", "training.epochs=2", "--set", "name=cli-transfer")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert {"run_id", "experiment", "metrics", "model_uri", "registered_model", "version", "alias", "gate",
            "transfer"} <= set(summary)
    assert summary["transfer"]["source"] == str(tmp_path / "source.pt")  # absolute: the recorded config works anywhere
    assert summary["transfer"]["strategy"] == "feature_extraction"
    assert summary["transfer"]["weights_copied"] == 2 and summary["experiment"] == "cli-transfer"


@pytest.mark.parametrize("args, message", [
    (["transfer"], "give --source models:/name@alias | FILE | torchvision:resnet18 (or --demo)"),
    (["transfer", "--source", "missing.pt"], "/missing.pt (give models:/name@alias"),  # absolute, as --set's
    (["transfer", "--source", "x.pt", "--strategy", "finetuning"], "unknown transfer strategy 'finetuning'"),
    (["transfer", "--source", "torchvision:resnet18"], "not in the local torch cache"),
    (["ensemble", "--method", "bagin"], "unknown ensemble method 'bagin'; valid: bagging, boosting"),
    (["ensemble", "--members", "3"], "give --method bagging|boosting|stacking|voting"),
    (["ensemble", "--method", "stacking", "--member", "model.name=vgg", "--member", "model.name=mlp"],
     "unknown model 'vgg'"),
    (["ensemble", "--method", "voting", "--member", "models:/nothing@champion", "--member", "model.name=mlp"],
     "ensemble member models:/nothing@champion: not found"),
    (["ensemble", "--ensemble", "none.yaml"], "ensemble file not found: none.yaml"),
    (["tune", "--search", "none.yaml"], "search file not found: none.yaml"),
    (["tune", "--search", "{search}"], "search.metric: 'test_accuracy' is not a validation metric"),
    (["compare", "--vary", "optimizer.name=sgd,lion"], "--vary optimizer.name='lion'"),
    (["compare", "--vary", "split.seed=1,2"], "--vary split.seed: cannot vary"),
    (["compare", "--vary", "optimizer.name"], "expected key=value1,value2"),
    (["compare", "--vary", "optimizer.name=sgd,adam", "--max-parallel", "0"], "expected a whole number of at least 1"),
    (["compare", "--vary", "optimizer.name=sgd,adam", "--repeats", "0"], "--repeats 0: give a whole number of at "
                                                                         "least 1, `auto`"),
    (["compare", "--vary", "optimizer.name=sgd", "--repeats", "auto:6"], "optimizer.name=sgd is the only variant"),
    (["variance", "--sources", "split,weather"], "--sources split,weather: give some of split, init, order"),
    (["variance", "--repeats", "2"], "--repeats 2: a spread with an interval needs at least 3 repeats"),
    (["compare", "--vary", "optimizer.name=sgd,adam", "--baseline", "rmsprop"],
     "--baseline 'rmsprop': not a variant; the variants are optimizer.name=sgd, optimizer.name=adam"),
    (["compare", "--vary", "optimizer.name=sgd,adam", "--resplit"], "--resplit: scores each repeat on another split"),
    (["compare", "--vary", "model.dropout=0,0.5", "--set", "split.val=0", "--set", "split.train=0.85",
      "--set", "training.early_stopping.enabled=false"], "compare scores on the validation split"),
])
def test_fan_out_bad_input_exits_2(tmp_path, args, message):
    search = tmp_path / "bad.yaml"
    search.write_text("metric: test_accuracy\nspace:\n  optimizer.lr: {type: float, low: 0.001, high: 0.1}\n")
    out = _trainflow(tmp_path, *[a.replace("{search}", str(search)) for a in args], "--json", timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("variable, url, what", [
    ("MLFLOW_TRACKING_URI", "http://trainer:pa55word@127.0.0.1:{port}", "MLflow tracking server"),
    ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect API"),
])
def test_an_unreachable_server_fails_at_once_naming_it(tmp_path, variable, url, what):
    url = url.format(port=free_port())
    out = subprocess.run([TRAINFLOW, "run", "--set", "training.epochs=1"], capture_output=True, text=True,
                         timeout=120, env=cli_env(tmp_path) | {variable: url}, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"the {what} at {url.replace('pa55word', '***')} does not answer" in " ".join(out.stderr.split())
    assert "pa55word" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_a_server_that_never_answers_fails_after_a_bounded_wait(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out = subprocess.run([TRAINFLOW, "run", "--set", "training.epochs=1"], capture_output=True, text=True,
                             timeout=120, env=cli_env(tmp_path) | {"MLFLOW_TRACKING_URI": url}, cwd=tmp_path)
    assert out.returncode == 2 and f"the MLflow tracking server at {url} does not answer (timed out)" in out.stderr
