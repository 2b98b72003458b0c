"""Repeats in rounds (`compare --repeats auto`) and the sources of variance (`trainflow variance`) end to end: real
Prefect API (test harness), real MLflow store."""

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from trainlib.config import load_config

BASE = ["model.name=mlp", "model.hidden=[64]", "training.epochs=2", "training.early_stopping.enabled=false"]


def _children(parent_run_id: str):
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def test_repeats_in_rounds_stop_each_variant_where_its_verdict_is_decided(prefect_api):
    from flows.compare import compare_flow
    from trainlib import sequential

    variants = [{"optimizer.name": "adam"}, {"optimizer.momentum": 0.9},  # a twin: momentum is not adam's
                {"optimizer.name": "sgd"}, {"augment.rotation": 5}]
    out = compare_flow(load_config(None, ["name=compare-auto", *BASE]), {}, variants=variants,
                       repeats="auto:4").json()
    rounds, verdicts = out["rounds"], {v["label"]: v for v in out["versus_baseline"] if v["metric"] == "test_accuracy"}
    assert [r["repeats"] for r in rounds["looks"]] == [3, 4]
    assert sum(r["level"] for r in rounds["looks"]) == pytest.approx(0.05, abs=1e-4)
    twin = verdicts["optimizer.momentum=0.9"]  # the same trainings as the baseline: equivalent at the first look
    assert twin["verdict"] == "equivalent" and twin["n"] == rounds["spent"]["optimizer.momentum=0.9"] == 3
    for label, v in verdicts.items():  # each judged on the repeats it trained; open ones went on to MAX
        assert v["n"] == rounds["spent"][label]
        assert (v["verdict"] in sequential.DECIDED) == (label not in rounds["undecided"])
        assert v["verdict"] in sequential.DECIDED or v["n"] == 4
    assert rounds["spent"]["optimizer.name=adam"] == max(rounds["spent"].values())  # the baseline ran to the last
    assert len(out["runs"]) == sum(rounds["spent"].values())
    assert sorted(r["repeat"] for r in out["runs"] if r["variant"] == "optimizer.momentum=0.9") == [0, 1, 2]
    metrics = MlflowClient().get_run(out["run_id"]).data.metrics  # P(better) and friends in MLflow
    assert metrics["versus/optimizer.name:sgd/test_accuracy/p_better"] == verdicts["optimizer.name=sgd"]["p_better"]


def test_variance_moves_one_seed_per_source_and_reports_each_sources_spread(prefect_api):
    from flows.variance import variance_flow

    out = variance_flow(load_config(None, ["name=variance-e2e", *BASE]),
                        ["split", "init", "augment"], repeats=3).json()
    client = MlflowClient()
    children = {r.info.run_name: r.data.params for r in _children(out["run_id"])}
    assert len(children) == len(out["children"]) == 7 and out["failed"] == []  # repeat 0 trained once, shared
    assert children["split #2"]["split.seed"] == "2" and children["split #2"]["training.seeds.init"] == "0"
    assert children["init #2"]["training.seeds.init"] == "2" and children["init #2"]["split.seed"] == "0"
    found = {s["source"]: s for s in out["sources"]}
    assert found["augment"]["sd"] == 0.0  # no augmentation: holding the other seeds reproduces repeat 0 exactly
    assert found["init"]["sd"] > 0 and found["split"]["sd"] > 0
    assert found["split"]["sd_low"] <= found["split"]["sd"] <= found["split"]["sd_high"]
    assert sum(s["share"] for s in out["sources"]) == pytest.approx(1.0, abs=1e-4)
    metrics = client.get_run(out["run_id"]).data.metrics
    assert metrics["variance/split/sd"] == pytest.approx(found["split"]["sd"], abs=1e-5)
    assert "variance.csv" in {a.path for a in client.list_artifacts(out["run_id"])}
