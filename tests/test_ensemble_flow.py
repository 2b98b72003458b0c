"""Ensemble flows end to end: real Prefect API (test harness), real MLflow store, the registered pyfunc model
loaded in a fresh process."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from trainlib.config import load_config, validate
from trainlib.ensemble import EnsembleConfig
from trainlib.errors import ConfigError, TrainingError

BASE = ["model.name=mlp", "model.hidden=[64]", "training.epochs=3", "training.early_stopping.enabled=false",
        "register.min_test_accuracy=0.5"]
DIVERGES = {"optimizer.name": "sgd", "optimizer.lr": 1.0e12}  # valid config, NaN loss in the first epoch


def _run(name: str, **ensemble) -> dict:
    from flows.ensemble import ensemble_pipeline

    return ensemble_pipeline(load_config(None, [f"name={name}", *BASE]), validate(ensemble, EnsembleConfig)).json()


def _children(parent_run_id: str):
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])


def _artifact_json(run_id: str, path: str):
    with open(MlflowClient().download_artifacts(run_id, path)) as file:
        return json.load(file)


def _split_rows(run_id: str, split: str) -> set[int]:
    manifest = pd.read_csv(MlflowClient().download_artifacts(run_id, "split_manifest.csv"))
    return set(manifest.loc[manifest["split"] == split, "index"])


@pytest.fixture(scope="module")
def bagging(prefect_api):
    return _run("ens-bagging", method="bagging", members=3)


def test_bagging_members_are_child_runs_on_different_bootstraps(bagging):
    children = _children(bagging["run_id"])
    assert sorted(r.info.run_id for r in children) == sorted(bagging["children"]) and len(children) == 3
    assert {r.data.tags["trainflow.kind"] for r in children} == {"member"}
    assert {r.data.params["training.seed"] for r in children} == {"0", "1", "2"}
    for run in children:
        m = run.data.metrics
        assert run.info.status == "FINISHED" and m["resample_classes"] == 10  # every class of the split kept
        assert m["resample_rows"] == len(_split_rows(bagging["run_id"], "train")) > m["resample_unique_rows"]
        assert {"val_accuracy", "test_accuracy", "test_f1"} <= set(m)
    assert all(r["weight"] == 1.0 for r in bagging["members"])


def test_ensemble_run_has_metrics_report_and_pyfunc_model(bagging, prefect_api):
    client = MlflowClient()
    run = client.get_run(bagging["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["trainflow.kind"] == "ensemble"
    assert run.data.params["ensemble.method"] == "bagging" and run.data.params["ensemble.members"] == "3"
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == bagging["metrics"]["test_accuracy"] > 0.8
    assert metrics["best_member_test_accuracy"] == pytest.approx(max(r["test_accuracy"] for r in bagging["members"]),
                                                                 abs=1e-4)  # table rounds to 4 places
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ensemble_scores.png", "member_disagreement.png", "member_disagreement.json", "ensemble.csv",
            "confusion_matrix.png", "ensemble.yaml", "config.yaml"} <= files
    disagreement = _artifact_json(run.info.run_id, "member_disagreement.json")
    assert len(disagreement["disagreement"]) == 3 == len(disagreement["members"])
    assert bagging["registered_model"] == "ens-bagging-ensemble" and bagging["alias"] == "champion"
    from mlflow.models import get_model_info

    info = get_model_info(bagging["model_uri"])
    assert set(info.flavors) == {"python_function"} and info.signature is not None
    from tests.test_tuning_flow import _prefect_table

    rows = _prefect_table("ens-bagging-ensemble", bagging["run_id"])
    assert [r["member"] for r in rows] == ["member 1", "member 2", "member 3", "ensemble (bagging)"]
    card = client.get_model_version("ens-bagging-ensemble", str(bagging["version"])).description  # its model card
    assert card.startswith("# Model card: ens-bagging-ensemble version")
    assert f"| test_accuracy | {metrics['test_accuracy']:.4f} [" in card  # outcomes logged: an interval
    assert card.count("member ") >= 3 and "- ensemble members: " in card


@pytest.fixture(scope="module")
def boosting(prefect_api):
    return _run("ens-boosting", method="boosting", members=3)


def test_boosting_records_member_weights(boosting):
    out = boosting
    members = [r for r in out["members"] if r["state"] == "complete"]
    assert members and all(r["weight"] > 0 for r in members)
    children = _children(out["run_id"])
    for run in children:
        assert "member_weight" in run.data.metrics and "weighted_train_error" in run.data.metrics
    weights = {r["run_id"]: r["weight"] for r in members}
    for run in children:
        if run.info.run_id in weights:
            assert run.data.metrics["member_weight"] == pytest.approx(weights[run.info.run_id], abs=5e-5)  # 4 places


@pytest.fixture(scope="module")
def stacking(prefect_api) -> dict[str, dict]:
    """Stacking with its meta-learner fitted out of fold and on validation: meta -> the flow's summary."""
    return {meta: _run(f"ens-stacking-{meta}", method="stacking", meta=meta, folds=2,
                       configs=[{"model.hidden": [32], "augment.mixup": 0.2, "training.ema.decay": 0.9},
                                {"optimizer.name": "sgd", "optimizer.lr": 0.05}])
            for meta in ("oof", "val")}


@pytest.mark.parametrize("meta, split", [("oof", "train"), ("val", "val")])
def test_stacking_meta_learner_never_sees_test_rows(stacking, meta, split):
    out = stacking[meta]
    run_id = out["run_id"]
    seen = _artifact_json(run_id, "stacking_meta_rows.json")
    assert seen["split"] == split and set(seen["rows"]) == _split_rows(run_id, split)
    assert not set(seen["rows"]) & _split_rows(run_id, "test")
    if meta == "oof":  # each member also reports how its out-of-fold predictions scored
        assert all("oof_accuracy" in r.data.metrics for r in _children(run_id))


def test_a_member_trains_with_the_recipe_techniques_it_is_given(stacking):
    mixed = [r for r in _children(stacking["val"]["run_id"]) if r.data.params.get("augment.mixup") == "0.2"]
    assert len(mixed) == 1 and mixed[0].data.params["training.ema.decay"] == "0.9"
    assert {"raw_val_loss", "raw_val_accuracy"} <= set(mixed[0].data.metrics)  # validated on its EMA, raw beside


@pytest.fixture(scope="module")
def single(prefect_api):
    from flows.training import training_pipeline

    return training_pipeline(load_config(None, ["name=ens-single", *BASE])).json()


@pytest.fixture(scope="module")
def hard_voting(single, prefect_api):
    return _run("ens-voting", method="voting", vote="hard",
                configs=["models:/ens-single@champion", {"model.hidden": [32]}, DIVERGES])


@pytest.fixture(scope="module")
def soft_voting(single, prefect_api):
    return _run("ens-soft", method="voting", vote="soft", configs=["models:/ens-single@champion",
                                                                  {"model.hidden": [32]}])


def test_voting_with_a_registered_model_survives_a_failing_member(single, hard_voting):
    uri, out = "models:/ens-single@champion", hard_voting
    states = [r["state"] for r in out["members"]]
    assert states == ["complete", "complete", "failed"] and "TrainingError" in out["members"][2]["error"]
    runs = {r.info.run_id: r for r in _children(out["run_id"])}
    registered = runs[out["members"][0]["run_id"]]
    assert registered.data.tags["trainflow.source_model"] == uri and registered.data.params["source_model"] == uri
    assert registered.data.metrics["test_accuracy"] == single["metrics"]["test_accuracy"]
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert len(failed) == 1 and "failure_reason" in failed[0].data.tags
    about = _artifact_json(out["run_id"], "model/artifacts/ensemble.json")
    assert about["rule"] == "hard" and [m["source"] for m in about["members"]] == [uri, None]


def test_too_few_members_fail_the_ensemble(prefect_api):
    with pytest.raises(TrainingError, match="only 1 of 3 ensemble members trained"):
        _run("ens-too-few", method="voting", min_members=2,
             configs=[DIVERGES, {"model.hidden": [32]}, DIVERGES | {"training.seed": 1}])
    client = MlflowClient()
    parent = client.search_runs([client.get_experiment_by_name("ens-too-few").experiment_id],
                                "tags.`trainflow.kind` = 'ensemble'")[0]
    assert parent.info.status == "FAILED" and "min_members" in parent.data.tags["failure_reason"]
    assert client.search_registered_models("name LIKE 'ens-too-few%'") == []  # nothing registered


def test_an_ensemble_cannot_vote_as_a_member(bagging, prefect_api):
    with pytest.raises(ConfigError, match="not a single trained model"):
        _run("ens-nested", method="voting", configs=["models:/ens-bagging-ensemble@champion", {}])


class _NextClass(torch.nn.Module):
    """A model whose every prediction is moved to the next class: what a faulty export would write."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).roll(1, 1)


@pytest.fixture(scope="module")
def misexported(single, prefect_api):
    """A voting ensemble (the single model twice: nothing to train) whose exported program is not the model in
    memory: the fault is put in the export step only, never in the evaluation or the gate."""
    import tasks.ensembles.combine
    from trainlib.export import export

    def export_next_class(module, example, path):
        export(_NextClass(module), example, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.ensembles.combine, "export", export_next_class)
        return _run("ens-misexported", method="voting", configs=["models:/ens-single@champion", "models:/ens-single/1"])


SERVE = """
import json, sys, mlflow, numpy as np, pandas as pd
from mlflow import MlflowClient
from sklearn.datasets import load_digits
client, x, y, results = MlflowClient(), *load_digits(return_X_y=True), {}
for key, (name, version) in json.loads(sys.argv[1]).items():
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    registered = client.get_model_version(name, version)
    run = client.get_run(registered.run_id)
    manifest = pd.read_csv(client.download_artifacts(run.info.run_id, "split_manifest.csv"))
    rows = manifest.loc[manifest["split"] == "test", "index"].to_numpy()
    out = model.predict(x[rows].reshape(-1, 1, 8, 8).astype(np.float32))  # raw 0..16 pixels
    results[key] = {"accuracy": float((out.argmax(1) == y[rows]).mean()), "run_accuracy":
                    run.data.metrics["test_accuracy"], "gate_accuracy": float(registered.tags["test_accuracy"]),
                    "probability_sums": np.exp(out).sum(1).round(4).tolist()[:3]}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def served(bagging, boosting, stacking, hard_voting, soft_voting, misexported) -> dict[str, dict]:
    """Every registered ensemble version loaded from the registry in one fresh process and scored there on its
    run's test split: key -> {accuracy (served), run_accuracy (recorded), gate_accuracy (the version's tag)}."""
    runs = {"bagging": bagging, "boosting": boosting, "stacking oof": stacking["oof"], "stacking val": stacking["val"],
            "hard voting": hard_voting, "soft voting": soft_voting, "misexported": misexported}
    versions = {key: [out["registered_model"], str(out["version"])] for key, out in runs.items()}
    out = subprocess.run([sys.executable, "-c", SERVE, json.dumps(versions)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["bagging", "boosting", "stacking oof", "stacking val", "hard voting",
                                    "soft voting"])
def test_every_registered_ensemble_reproduces_its_test_accuracy_in_a_fresh_process(served, method):
    result = served[method]
    assert result["accuracy"] == pytest.approx(result["run_accuracy"], abs=1e-9)  # what the run recorded
    assert result["accuracy"] == pytest.approx(result["gate_accuracy"], abs=1e-6)  # what the gate scored (6 places)
    assert result["accuracy"] > 0.5
    assert result["probability_sums"] == [1.0, 1.0, 1.0]  # log-probabilities out


def test_the_gate_scores_the_exported_program_not_the_model_in_memory(single, misexported, served):
    result = served["misexported"]
    # in memory: the single model twice, as accurate as it is; exported: every prediction one class off
    assert single["metrics"]["test_accuracy"] > 0.8 > 0.2 > result["accuracy"]
    assert misexported["metrics"]["test_accuracy"] == pytest.approx(result["accuracy"], abs=1e-9)
    assert result["run_accuracy"] == pytest.approx(result["accuracy"], abs=1e-9)
    assert misexported["gate"]["test_accuracy"] == pytest.approx(result["accuracy"], abs=1e-9)
    assert not misexported["gate"]["passed"] and misexported["alias"] == "challenger"
    assert misexported["gate"]["outcome"] == "below_minimum" and "below the gate" in misexported["gate"]["reason"]


def test_repeated_ensembles_are_judged_against_their_members_and_only_repeat_0_is_registered(prefect_api):
    from flows.ensemble import ensemble_pipeline

    out = ensemble_pipeline(load_config(None, ["name=ens-repeats", *BASE]),
                            validate({"method": "bagging", "members": 2}, EnsembleConfig), repeats=3,
                            resplit=True).json()
    client, r = MlflowClient(), out["repeats"]
    repeats = _children(out["run_id"])
    assert [x.info.run_id for x in repeats] == out["repeat_runs"] and len(repeats) == 3
    seeds = [(x.data.params["training.seed"], x.data.params["split.seed"], x.data.params["ensemble.seed"])
             for x in repeats]
    assert seeds == [("0", "0", "0"), ("2", "1", "1"), ("4", "2", "2")]  # members' seeds never shared
    assert all(len(_children(x.info.run_id)) == 2 for x in repeats)  # each repeat's own members
    versions = client.search_model_versions("name='ens-repeats-ensemble'")
    assert [v.run_id for v in versions] == [out["repeat_runs"][0]]  # repeats 1, 2 are evidence only
    for row in r["runs"]:  # the best member is chosen on validation, the mean is over the members
        members = _children(row["run_id"])
        tests = {m.info.run_name: m.data.metrics["test_accuracy"] for m in members}
        vals = {m.info.run_name: m.data.metrics["val_accuracy"] for m in members}
        assert row["best_member_test_accuracy"] == pytest.approx(tests[max(vals, key=vals.get)], abs=1e-4)
        assert row["mean_member_test_accuracy"] == pytest.approx(sum(tests.values()) / 2, abs=1e-4)
    versus = {(v["label"], v["metric"]): v for v in r["versus"]}
    diffs = [x["ensemble_test_accuracy"] - x["best_member_test_accuracy"] for x in r["runs"]]
    best = versus[("ensemble vs best member", "test_accuracy")]
    assert best["n"] == 3 and best["diff"] == pytest.approx(sum(diffs) / 3, abs=1e-3)
    assert best["ci_low"] <= best["diff"] <= best["ci_high"] and best["verdict"] in (
        "better", "worse", "no detectable difference", "equivalent")
    assert 0 <= best["p_better_low"] <= best["p_better"] <= best["p_better_high"] <= 1  # the ensemble's chance
    assert best["p_holm"] >= best["p"]  # corrected with the other member it faces on the same measure
    assert {"repeats.csv", "versus_members.csv", "ensemble_vs_members.png", "ensemble_versus_members.png"} <= {
        a.path for a in client.list_artifacts(out["run_id"])}
