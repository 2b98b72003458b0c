"""The LR range test as a flow and as `optimizer.lr: find` in a training run: real Prefect API (test harness),
real MLflow store."""

import pytest
from mlflow import MlflowClient

from trainlib.config import load_config

SMALL = ["model.name=mlp", "model.hidden=[32]", "training.epochs=2", "training.early_stopping.enabled=false"]


def test_the_lr_find_flow_records_its_sweep_and_suggestion(prefect_api):
    from flows.lr_find import lr_find_flow

    out = lr_find_flow(load_config(None, [*SMALL, "name=lr-find-flow"]), updates=60, start=1e-5, end=10.0).json()
    assert out["rule"] == "steepest" and 1e-5 < out["suggested_lr"] < 10 and 20 < out["updates"] <= 60
    client = MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.tags["trainflow.kind"] == "lr-find" and run.data.params["lr_find.updates"] == "60"
    assert run.data.metrics["suggested_lr"] == out["suggested_lr"]
    assert run.data.tags["lr_find.stopped"] == out["stopped"]
    assert {"lr_find.png", "lr_find.csv"} <= {a.path for a in client.list_artifacts(out["run_id"])}
    lrs = [m.value for m in sorted(client.get_metric_history(out["run_id"], "sweep_lr"), key=lambda m: m.step)]
    assert len(lrs) == out["updates"] and lrs == sorted(lrs) and lrs[0] == 1e-5
    # what ran, not what was asked: the LR its last update reached (the planned end only when it completed)
    assert out["planned"] == 60 and out["reached"] == lrs[-1] and out["end"] == 10.0
    assert (out["stopped"] == "completed") == (out["updates"] == 60 and out["reached"] == pytest.approx(10.0))


def test_optimizer_lr_find_trains_at_the_suggested_lr_and_records_it(prefect_api):
    from flows.training import training_pipeline

    cfg = load_config(None, [*SMALL, "name=lr-find-run", "optimizer.lr=find", "register.enabled=false"])
    out = training_pipeline(cfg).json()
    run = MlflowClient().get_run(out["run_id"])
    found = run.data.metrics["found_lr"]
    assert run.data.params["optimizer.lr"] == "find" and 1e-7 < found < 10
    assert run.data.metrics["lr"] == found  # a constant schedule: every epoch at the found LR
