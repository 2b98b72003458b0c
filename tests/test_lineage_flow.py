"""Lineage a user can act on, end to end as real `trainflow` processes on a real MLflow store: the model card of a
registered version (every number the run's), `trainflow rerun` (the same metrics; a changed data file refused with
exit 2, naming both digests), and a compare child rerun as it was trained."""

import json
import subprocess

import pandas as pd
import pytest
from conftest import TRAINFLOW, cli_env, digits_csv
from mlflow import MlflowClient

from tasks.registry.card import HTML

SMALL = ["--set", "model.name=mlp", "--set", "model.hidden=[32]", "--set", "training.epochs=3",
         "--set", "data.source=csv", "--set", "data.target=label", "--set", "register.min_test_accuracy=0"]


def _trainflow(env, *args, timeout=300):
    return subprocess.run([TRAINFLOW, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small run on a CSV of its own, registered as `lineage` (version 1, @champion)."""
    folder = tmp_path_factory.mktemp("lineage")
    env = cli_env(folder) | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    data = digits_csv(folder / "digits.csv")
    out = _trainflow(env, "run", "--name", "lineage", *SMALL, "--set", f"data.path={data}", "--json")
    assert out.returncode == 0, out.stderr
    return env, json.loads(out.stdout), data, MlflowClient(env["MLFLOW_TRACKING_URI"])


def test_the_card_gives_the_numbers_the_run_logged(trained):
    env, run, _, client = trained
    out = _trainflow(env, "card", "lineage@champion", "--json")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    logged = client.get_run(run["run_id"]).data.metrics
    assert card["run_id"] == run["run_id"] and card["version"] == 1 and card["aliases"] == ["champion"]
    for name, estimate in card["metrics"].items():
        assert estimate["value"] == logged[name], name
    for name in ("test_accuracy", "test_f1", "test_ece"):  # a 95% bootstrap interval around each
        e = card["metrics"][name]
        assert e["low"] <= e["value"] <= e["high"] and e["low"] < e["high"], name
    report = json.loads(open(client.download_artifacts(run["run_id"], "classification_report.json")).read())
    assert {c["name"]: c["f1"] for c in card["per_class"]} == {
        k: v["f1-score"] for k, v in report.items() if isinstance(v, dict) and k not in ("macro avg", "weighted avg")}
    assert card["weakest"][0] == min(card["per_class"], key=lambda c: (c["f1"], c["name"]))["name"]  # none perfect
    manifest = pd.read_csv(client.download_artifacts(run["run_id"], "split_manifest.csv"))
    for counted in card["data"]["counts"]:  # each class of each split, as the manifest holds them
        labels = manifest.loc[manifest["split"] == counted["split"], "label"]
        assert counted["per_class"] == [int((labels == i).sum()) for i in range(len(card["data"]["classes"]))]
    assert card["data"]["digest"] == client.get_run(run["run_id"]).data.tags["dataset.digest"]
    assert card["cost"] == {k: logged[k] for k in card["cost"]}
    assert set(card["cost"]) >= {"train_wall_seconds", "train_cpu_seconds", "stopped_epoch", "train_peak_memory_mb"}
    assert card["size"] == [int(logged["model_parameters"]), int(logged["model_bytes"])]
    assert card["calibration"]["test_ece"] == logged["test_ece"]
    assert sum(n for _, _, n in card["reliability"]) == (manifest["split"] == "test").sum()
    changes = {key: (value, default) for key, value, default, _ in card["changes"]}
    assert changes["model.hidden"] == ("[32]", "[256, 128]") and changes["training.epochs"] == ("3", "30")
    assert "optimizer.lr" not in changes  # left at its default
    assert "model.name" not in changes and "data.target" not in changes  # what this data gives by default
    # the registry shows the same card: the version's description, and the run's HTML page
    version = client.get_model_version("lineage", "1")
    assert version.description.startswith("# Model card: lineage version 1\n")
    assert "when the version held @champion" in version.description
    assert f"| test_accuracy | {logged['test_accuracy']:.4f} [" in version.description
    page = open(client.download_artifacts(run["run_id"], HTML)).read()
    assert "<h1>Model card: lineage version 1</h1>" in page and "data:image/png;base64," in page


def test_the_sections_a_person_writes_are_kept_for_every_version(trained, tmp_path):
    env, _, _, client = trained
    out = _trainflow(env, "card", "lineage/1", "--intended-use", "sorting scanned 8x8 digits",
                     "--limitations", "not tested on other handwriting", "--html", str(tmp_path / "card.html"))
    assert out.returncode == 0, out.stderr
    assert "model card written to" in out.stdout
    assert "sorting scanned 8x8 digits" in (tmp_path / "card.html").read_text()
    assert client.get_registered_model("lineage").tags["card.limitations"] == "not tested on other handwriting"
    assert "## Intended use\n\nsorting scanned 8x8 digits" in client.get_model_version("lineage", "1").description
    bad = _trainflow(env, "card", "lineage@nobody")
    assert bad.returncode == 2 and "lineage has no alias @nobody" in bad.stderr


def test_a_rerun_reproduces_the_run_and_refuses_changed_data(trained):
    env, run, data, client = trained
    out = _trainflow(env, "rerun", run["run_id"], "--json")
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert again["exact"] and {m["metric"] for m in again["metrics"]} >= {"test_accuracy", "test_loss", "test_ece"}
    assert all(m["difference"] == 0 for m in again["metrics"])
    new = client.get_run(again["run_id"])
    assert new.data.tags["trainflow.rerun_of"] == run["run_id"] and new.data.tags.get("gate") == "not_registered"
    assert len(client.search_model_versions("name = 'lineage'")) == 1  # a rerun registers nothing by default
    digest = client.get_run(run["run_id"]).data.tags["dataset.digest"]
    frame = pd.read_csv(data)
    frame.loc[0, "p10"] = frame.loc[0, "p10"] + 1  # one pixel of one image
    frame.to_csv(data, index=False)
    refused = _trainflow(env, "rerun", run["run_id"])
    assert refused.returncode == 2, refused.stderr
    assert f"its digest was {digest}" in refused.stderr and "--allow-data-change" in refused.stderr
    assert refused.stderr.count("\n") <= 2  # one message, no traceback
    allowed = _trainflow(env, "rerun", run["run_id"], "--allow-data-change", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["data_changed"]["then"] == digest


def test_a_compare_child_is_rerun_as_it_was_trained_and_the_registered_one_has_a_full_card(trained):
    env, _, data, client = trained
    out = _trainflow(env, "compare", "--name", "lineage-compare", *SMALL, "--set", f"data.path={data}",
                     "--set", "calibrate.method=temperature", "--vary", "optimizer.name=adam,sgd", "--json")
    assert out.returncode == 0, out.stderr
    made = _trainflow(env, "card", "lineage-compare/1", "--json")
    assert made.returncode == 0, made.stderr
    card = json.loads(made.stdout)  # a variant's run, recorded at registration as a training run is
    registered = client.get_run(card["run_id"])
    accuracy = card["metrics"]["test_accuracy"]
    assert accuracy["value"] == registered.data.metrics["test_accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"] and accuracy["low"] < accuracy["high"]
    manifest = pd.read_csv(client.download_artifacts(card["run_id"], "split_manifest.csv"))
    test = next(c for c in card["data"]["counts"] if c["split"] == "test")
    assert sum(test["per_class"]) == (manifest["split"] == "test").sum() == sum(n for *_, n in card["reliability"])
    assert card["calibration"]["temperature"] > 0 and "test_ece_uncalibrated" in card["calibration"]
    assert card["lineage"][0][0] == "parent run" and "(a comparison)" in card["lineage"][0][1]
    child = next(r for r in json.loads(out.stdout)["runs"] if r["variant"] == "optimizer.name=sgd")
    again = _trainflow(env, "rerun", child["run_id"], "--json")
    assert again.returncode == 0, again.stderr
    found = json.loads(again.stdout)
    assert found["kind"] == "variant" and found["exact"], found
    rerun = {m["metric"]: m["rerun"] for m in found["metrics"]}
    assert rerun["test_accuracy"] == pytest.approx(child["test_accuracy"], abs=5e-5)  # the report rounds to 4
