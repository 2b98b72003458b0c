"""Transfer flows end to end: real Prefect API (test harness), real MLflow store."""

import json

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from trainlib.config import load_config, override
from trainlib.errors import ConfigError

FAST = ["model.name=mlp", "model.hidden=[64]", "training.epochs=4", "training.early_stopping.enabled=false",
        "register.min_test_accuracy=0.3"]


@pytest.fixture(scope="module")
def demo(prefect_api):
    from flows.transfer import transfer_demo

    return transfer_demo(load_config(None, FAST), shots=5).json()


def test_demo_trains_the_source_then_transfer_and_scratch(demo):
    assert [r["run"] for r in demo["runs"]] == ["source: models:/digits-0-4@champion", "finetune",
                                                "feature_extraction", "scratch"]
    for row in demo["runs"]:
        assert 0 < row["test_accuracy"] <= 1 and row["best_epoch"] >= 1 and row["train_seconds"] > 0
    client = MlflowClient()
    parent = client.get_run(demo["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["split.shots"] == "5"
    files = {a.path for a in client.list_artifacts(demo["run_id"])}
    assert {"transfer_demo.csv", "transfer_demo.png"} <= files
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{demo['run_id']}'")
    assert sorted(r.info.run_id for r in children) == sorted(demo["children"])


def test_transfer_runs_record_their_source_lineage(demo):
    client = MlflowClient()
    source = client.get_model_version_by_alias("digits-0-4", "champion")
    for run_id in demo["children"]:
        run = client.get_run(run_id)
        tags, params = run.data.tags, run.data.params
        assert tags["transfer.source"] == params["transfer.source"] == "models:/digits-0-4@champion"
        assert tags["transfer.source_run_id"] == source.run_id
        assert tags["transfer.source_version"] == str(source.version)
        assert tags["transfer.strategy"] == params["transfer.strategy"] and tags["trainflow.kind"] == "transfer"
        assert params["data.classes"] == json.dumps(["5", "6", "7", "8", "9"])
        with open(client.download_artifacts(run_id, "transfer_weights.json")) as file:
            weights = json.load(file)
        copied = [] if tags["transfer.strategy"] == "scratch" else ["net.1.bias", "net.1.weight"]  # the hidden layer
        assert sorted(weights["copied"]) == copied and weights["new"] != []
    finetune = client.get_run(demo["children"][0])
    assert finetune.data.tags["registered_model"] == "digits-5-9"


def test_a_second_demo_reuses_the_registered_source(demo, prefect_api):
    from flows.transfer import transfer_demo

    again = transfer_demo(load_config(None, FAST), shots=5).json()
    versions = MlflowClient().search_model_versions("name = 'digits-0-4'")
    assert len(versions) == 1 and again["source"]["run_id"] == demo["source"]["run_id"]


def test_a_source_that_does_not_fit_fails_before_training(demo, prefect_api, tmp_path):
    from flows.transfer import transfer_pipeline

    config = override(load_config(None, FAST), {"name": "transfer-misfit", "data.source": "csv",
                                                "data.path": "configs/data/iris.csv", "data.target": "species",
                                                "transfer.source": "models:/digits-0-4@champion"})
    with pytest.raises(ConfigError, match="takes 64 input features per sample .* this data gives 4"):
        transfer_pipeline(config).json()
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("transfer-misfit").experiment_id])[0]
    assert run.info.status == "FAILED" and "input features" in run.data.tags["failure_reason"]
    assert client.search_registered_models("name = 'transfer-misfit'") == []


def test_a_run_is_a_source_by_its_run_uri_and_its_transfer_may_register_nothing(demo, prefect_api):
    from flows.transfer import DIGITS_5_9, transfer_pipeline

    source_run = demo["source"]["run_id"]  # what a --no-register run leaves: a run, no version to name
    config = override(load_config(None, FAST), DIGITS_5_9 | {"name": "transfer-from-run", "split.shots": 5,
                                                            "transfer.source": f"runs:/{source_run}",
                                                            "register.enabled": False})
    out = transfer_pipeline(config).json()
    assert (out["registered_model"], out["version"], out["alias"], out["gate"]) == (None, None, None, None)
    client = MlflowClient()
    tags = client.get_run(out["run_id"]).data.tags
    assert tags["transfer.source_run_id"] == source_run and tags["transfer.source_version"] == ""
    assert tags["gate"] == "not_registered" and client.search_registered_models("name = 'transfer-from-run'") == []
