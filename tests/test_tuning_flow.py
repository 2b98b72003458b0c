"""Tuning and comparison flows end to end: real Prefect API (test harness), real MLflow store."""

import json

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from trainlib.config import load_config, validate
from trainlib.measures import RUN_MEASURES
from trainlib.tuning import SearchConfig

BASE = ["model.name=mlp", "model.hidden=[64]", "training.epochs=3", "training.early_stopping.enabled=false"]


def _search(**fields) -> SearchConfig:
    return validate({"strategy": "random", "n_trials": 4, "pruner": "none", "max_parallel": 2, "seed": 0,
                     "space": {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                               "model.hidden": {"type": "categorical", "choices": [[32], [64, 32]]}}} | fields,
                    SearchConfig)


def _children(parent_run_id: str):
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def _prefect_table(key: str, run_id: str) -> list[dict]:
    """The table artifact `key` created by the flow run behind MLflow run `run_id`."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    flow_run_id = MlflowClient().get_run(run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    data = next(a.data for a in found if str(a.flow_run_id) == flow_run_id)
    return json.loads(data) if isinstance(data, str) else data


@pytest.fixture(scope="module")
def study(prefect_api):
    from flows.tuning import tuning_flow

    return tuning_flow(load_config(None, ["name=tune-e2e", *BASE]), _search()).json()


def test_no_trial_starts_after_the_timeout(prefect_api):
    """search.timeout: seconds after which no trial starts (those running finish), even with trials left to run."""
    from flows.tuning import tuning_flow

    timeout = 4
    out = tuning_flow(load_config(None, ["name=tune-timeout", *BASE]),
                      _search(n_trials=200, timeout=timeout, max_parallel=1)).json()
    trials = sorted(r.info.start_time for r in _children(out["run_id"]) if r.data.tags["trainflow.kind"] == "trial")
    assert 2 <= len(trials) < 200
    # the clock starts when the study starts asking, just before the first trial's run opens; a trial asked for just
    # before the deadline opens its run a moment later (submitted, then its run created: 0.4 s over once in a
    # loaded lane), so a second of slack; a timeout not kept runs on for 200 trials, about 30 s
    assert (trials[-1] - trials[0]) / 1000 < timeout + 1, [(t - trials[0]) / 1000 for t in trials]


def test_trials_are_child_runs_that_do_not_collide(study):
    client = MlflowClient()
    children = _children(study["run_id"])
    trials = [r for r in children if r.data.tags["trainflow.kind"] == "trial"]
    assert len(trials) == 4 and {r.info.run_id for r in trials} | {study["children"][-1]} == set(study["children"])
    for run in trials:  # each trial's own params, and exactly one metric point per epoch of its own
        overrides = json.loads(run.data.tags["trainflow.overrides"])
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(overrides["optimizer.lr"])
        assert run.data.params["model.hidden"] == json.dumps(overrides["model.hidden"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == [1, 2, 3] and run.info.status == "FINISHED"
    assert len({r.data.params["optimizer.lr"] for r in trials}) == 4


def test_study_reports_and_registers_the_retrained_best(study):
    client = MlflowClient()
    parent = client.get_run(study["run_id"])
    artifacts = {a.path for a in client.list_artifacts(study["run_id"])}
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png", "search.yaml",
            "config.yaml"} <= artifacts
    assert parent.data.metrics["trials_complete"] == 4 and parent.data.params["search.strategy"] == "random"
    retrain = client.get_run(study["children"][-1])
    assert retrain.data.tags[MLFLOW_PARENT_RUN_ID] == study["run_id"]
    assert "test_accuracy" in retrain.data.metrics and "val_accuracy" in retrain.data.metrics
    best = study["best_trial"]
    assert float(retrain.data.params["optimizer.lr"]) == pytest.approx(best["params"]["optimizer.lr"])
    assert best["value"] == max(r.data.metrics["best_val_accuracy"] for r in _children(study["run_id"])
                                if r.data.tags["trainflow.kind"] == "trial")
    version = client.get_model_version("tune-e2e", str(study["version"]))
    assert version.run_id == retrain.info.run_id and study["alias"] == "champion"
    rows = _prefect_table("tune-e2e-trials", study["run_id"])
    assert sorted(r["trial"] for r in rows) == [0, 1, 2, 3] and all(r["state"] == "complete" for r in rows)


def test_a_study_on_signals_searches_the_signal_models_keys_and_registers_the_best(prefect_api):
    from flows.tuning import tuning_flow

    grid = _search(strategy="grid", n_trials=None, space={
        "model.name": {"type": "categorical", "choices": ["cnn1d", "lstm"]},
        "model.kernel_size": {"type": "categorical", "choices": [3, 9]}})
    out = tuning_flow(load_config(None, [
        "name=tune-signals", "data.source=waveforms", "model.name=cnn1d", "model.channels=[8]", "model.hidden_size=8",
        "training.epochs=1", "training.early_stopping.enabled=false", "register.min_test_accuracy=0"]), grid).json()
    trials = [r for r in _children(out["run_id"]) if r.data.tags["trainflow.kind"] == "trial"]
    combos = [tuple(json.loads(r.data.tags["trainflow.overrides"]).values()) for r in trials]
    assert sorted(combos) == [("cnn1d", 3), ("cnn1d", 9), ("lstm", 3), ("lstm", 9)]
    retrain = MlflowClient().get_run(out["children"][-1])
    assert retrain.data.params["model.name"] == out["best_trial"]["params"]["model.name"]
    assert out["alias"] == "champion"


def test_grid_study_runs_every_combination_once_in_parallel(prefect_api):
    from flows.tuning import tuning_flow

    grid = _search(strategy="grid", n_trials=None, space={
        "optimizer.name": {"type": "categorical", "choices": ["adam", "rmsprop"]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.2}})
    out = tuning_flow(load_config(None, ["name=grid-e2e", *BASE]), grid).json()
    combos = [tuple(json.loads(r.data.tags["trainflow.overrides"]).values())
              for r in _children(out["run_id"]) if r.data.tags["trainflow.kind"] == "trial"]
    assert sorted(combos) == sorted([("adam", 0.0), ("adam", 0.2), ("rmsprop", 0.0), ("rmsprop", 0.2)])


def test_pruned_trials_are_recorded_as_pruned(prefect_api, tmp_path):
    from flows.tuning import tuning_flow

    search = _search(n_trials=3, pruner="median", prune_after=1, max_parallel=1, storage=f"sqlite:///{tmp_path}/s.db",
                     study_name="prune", space={"optimizer.lr": {"type": "float", "low": 1e-9, "high": 1e-2,
                                                                 "log": True}})
    queued = optuna.create_study(study_name="prune", storage=search.storage, direction="maximize")
    for lr in (3e-3, 2e-3, 1e-9):  # two good trials set the median, then one that learns nothing
        queued.enqueue_trial({"optimizer.lr": lr})
    out = tuning_flow(load_config(None, ["name=prune-e2e", *BASE, "training.epochs=4"]), search).json()
    trials = [r for r in _children(out["run_id"]) if r.data.tags["trainflow.kind"] == "trial"]
    pruned = [r for r in trials if r.data.tags.get("trial.state") == "pruned"]
    assert out["trials"]["pruned"] == len(pruned) == 1 and out["trials"]["complete"] == 2
    run = pruned[0]
    assert run.info.status == "KILLED" and float(run.data.params["optimizer.lr"]) == pytest.approx(1e-9)
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]


def test_study_in_rdb_storage_resumes(prefect_api, tmp_path):
    from flows.tuning import tuning_flow

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = load_config(None, ["name=resume-e2e", *BASE, "training.epochs=2"])
    first = tuning_flow(cfg, _search(n_trials=2, storage=storage, study_name="shared")).json()
    second = tuning_flow(cfg, _search(n_trials=4, storage=storage, study_name="shared", retrain="train+val")).json()
    assert len(first["children"]) == 3 and len(second["children"]) == 3  # 2 new trials + the retrain each time
    stored = optuna.load_study(study_name="shared", storage=storage)
    assert [t.number for t in stored.trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored.trials)
    retrain = MlflowClient().get_run(second["children"][-1])
    assert retrain.data.params["training.early_stopping.enabled"] == "False"
    chosen = stored.trials[second["best_trial"]["number"]]  # trained for the epochs it was best at
    assert retrain.data.params["training.epochs"] == str(chosen.user_attrs["best_epoch"])
    assert "val_accuracy" not in retrain.data.metrics  # trained on train+val: no validation split left


@pytest.fixture(scope="module")
def comparison(prefect_api):
    from flows.compare import compare_flow

    return compare_flow(load_config(None, ["name=compare-e2e", *BASE]),
                        {"optimizer.name": ["adam", "sgd"], "augment.rotation": [0, 10]}, repeats=2, resplit=True,
                        baseline="optimizer.name=sgd, augment.rotation=0").json()


def test_compare_trains_the_full_grid_repeated_as_children_and_reports(comparison):
    client = MlflowClient()
    children = _children(comparison["run_id"])
    assert len(children) == 8 == len(comparison["children"])
    labels = {f"optimizer.name={o}, augment.rotation={a}" for o in ("adam", "sgd") for a in (0, 10)}
    assert {r.info.run_name for r in children} == {f"{v} #{i}" for v in labels for i in (0, 1)}
    for r in children:  # paired: repeat i of every variant has the same seeds; resplit: its own split too
        repeat = int(r.data.tags["trainflow.repeat"])
        assert r.data.tags["trainflow.variant"] in labels and r.info.run_name.endswith(f"#{repeat}")
        assert r.data.params["training.seed"] == r.data.params["split.seed"] == str(repeat)
        assert {"best_epoch", "stopped_epoch", "train_seconds", "test_accuracy"} <= set(r.data.metrics)
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] == ["checkpoints/model.pt"]
    assert {"compare_val_curves.png", "compare_means.png", "compare_versus_test_accuracy.png", "compare_lr_curves.png",
            "comparison.csv", "runs.csv",
            "versus_baseline.csv"} <= {a.path for a in client.list_artifacts(comparison["run_id"])}
    table = _prefect_table("compare-e2e-comparison", comparison["run_id"])
    assert {r["variant"] for r in table} == labels and all(r["n"] == 2 for r in table)
    winner = max(comparison["summary"], key=lambda s: (s["best_val_accuracy"]["mean"], -s["best_val_loss"]["mean"]))
    assert comparison["best_variant"] == winner["label"]
    for s in comparison["summary"]:  # the mean of its two repeats
        runs = [r for r in comparison["runs"] if r["variant"] == s["label"]]
        for m in ("test_accuracy", "test_loss", "best_val_accuracy", "epochs"):
            assert s[m]["mean"] == pytest.approx(sum(r[m] for r in runs) / 2, abs=1e-4), m
        assert s["test_accuracy"]["ci_low"] <= s["test_accuracy"]["mean"] <= s["test_accuracy"]["ci_high"]
    assert comparison["baseline"] == "optimizer.name=sgd, augment.rotation=0"
    assert {(v["label"], v["metric"]) for v in comparison["versus_baseline"]} == {
        (label, m) for label in labels - {comparison["baseline"]} for m in RUN_MEASURES}
    for m in ("test_accuracy", "test_loss"):  # three variants face the baseline: Holm corrects for three tests
        family = sorted(v["p"] for v in comparison["versus_baseline"] if v["metric"] == m)
        smallest = min(v["p_holm"] for v in comparison["versus_baseline"] if v["metric"] == m)
        assert smallest == pytest.approx(min(1.0, 3 * family[0]), abs=3e-4)  # both rounded to 4 places in the JSON
    assert "near_zero_weights" in RUN_MEASURES and all(s["weight_norm"]["mean"] > 0 for s in comparison["summary"])
    # registered: the winner's repeat with the best validation score
    best = max((r for r in comparison["runs"] if r["variant"] == winner["label"]),
               key=lambda r: (r["best_val_accuracy"], -r["best_val_loss"]))
    version = client.get_model_version("compare-e2e", str(comparison["version"]))
    assert version.run_id == best["run_id"] and comparison["best_repeat"] == best["repeat"]


FAMILIES = {
    "optimizers": {"optimizer.name": ["sgd", "adagrad"]},
    "schedules": {"schedule.name": ["onecycle", "plateau"]},
    "regularization": {"regularization.l1": [0.0, 1e-4], "regularization.l2": [1e-3]},
    "dropout": {"model.dropout": [0.0, 0.5]},
    "augmentation": {"augment.rotation": [0, 15], "augment.erasing": [0.0, 0.3]},
    "normalization": {"normalize.method": ["minmax", "none"]},
    "gd modes": {"training.mode": ["batch", "stochastic"]},
    "early stopping": {"training.early_stopping.enabled": [True, False]},
    "batch mixing": {"augment.mixup": [0.0, 0.2], "augment.cutmix": [0.0, 1.0]},
    "policies": {"augment.policy": ["trivialaugment", "augmix"]},
    "weight averaging": {"training.ema.decay": [0.0, 0.99]},
    "recipe knobs": {"training.accumulate": [1, 2], "optimizer.norm_weight_decay": [0.0]},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_compare_works_for_every_technique_family(prefect_api, family):
    from flows.compare import compare_flow

    out = compare_flow(load_config(None, [f"name=family-{family.replace(' ', '-')}", *BASE, "training.epochs=1",
                                          "training.batch_size=128"]), FAMILIES[family]).json()
    assert all(r["state"] == "complete" for r in out["runs"])
    assert len(out["runs"]) == len(out["children"]) >= 2


def test_invalid_combinations_and_failing_trials_do_not_sink_the_study(prefect_api):
    from flows.tuning import tuning_flow

    search = _search(strategy="grid", n_trials=None, max_parallel=2, space={
        "optimizer.name": {"type": "categorical", "choices": ["sgd", "adam"]},
        "optimizer.nesterov": {"type": "categorical", "choices": [True, False]},  # adam + nesterov: refused
        "training.batch_size": {"type": "categorical", "choices": [64, 5000]}})  # 5000 > the train split: fails
    out = tuning_flow(load_config(None, ["name=fail-e2e", *BASE, "training.epochs=1", "optimizer.name=sgd"]),
                      search).json()
    assert out["trials"] == {"complete": 3, "pruned": 0, "fail": 5}
    assert out["best_trial"]["params"]["training.batch_size"] == 64
    failed = [r for r in _children(out["run_id"]) if r.data.tags["trainflow.kind"] == "trial"
              and r.info.status == "FAILED"]
    assert len(failed) == 3 and all("larger than the train split" in r.data.tags["failure_reason"] for r in failed)


def test_a_study_fails_when_fewer_than_min_complete_trials_complete(prefect_api):
    from flows.tuning import tuning_flow
    from trainlib.errors import TrainingError

    search = _search(strategy="grid", n_trials=None, min_complete=2, space={
        "training.batch_size": {"type": "categorical", "choices": [64, 5000]}})  # 5000 > the train split: fails
    with pytest.raises(TrainingError, match=r"1 trial\(s\) of study min-complete-study completed, fewer than "
                                            r"search.min_complete \(2\)"):
        tuning_flow(load_config(None, ["name=min-complete", *BASE, "training.epochs=1"]), search).json()
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("min-complete").experiment_id])
    study = next(r for r in runs if r.data.tags["trainflow.kind"] == "tuning")
    assert study.info.status == "FAILED" and "search.min_complete (2)" in study.data.tags["failure_reason"]
    trials = sorted(r.info.status for r in runs if r.data.tags["trainflow.kind"] == "trial")
    assert trials == ["FAILED", "FINISHED"]  # both recorded; no model registered from a failed study
    assert client.search_registered_models("name = 'min-complete'") == []



def test_a_two_objective_search_reports_the_pareto_front_and_retrains_the_member_its_rule_picks(prefect_api):
    from flows.tuning import tuning_flow

    search = _search(n_trials=4, second_metric="model_parameters", tolerance=0.02,
                     space={"model.hidden": {"type": "categorical", "choices": [[8], [32], [128], [256, 128]]},
                            "optimizer.lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True}})
    out = tuning_flow(load_config(None, ["name=tune-pareto", *BASE]), search).json()
    trials = {int(r.data.tags["mlflow.runName"].split()[-1]): r.data.metrics for r in _children(out["run_id"])
              if r.data.tags.get("trainflow.kind") == "trial"}
    points = {n: (m["best_val_accuracy"], m["model_parameters"]) for n, m in trials.items()}
    dominated = {n for n, (a, c) in points.items()
                 if any(a2 >= a and c2 <= c and (a2, c2) != (a, c) for a2, c2 in points.values())}
    front = {t["number"] for t in out["front"]}
    assert front == set(points) - dominated and front  # exactly the trials no other beats on both
    assert [t["second"] for t in out["front"]] == sorted(t["second"] for t in out["front"])
    best = max(t["value"] for t in out["front"])
    near = [t for t in out["front"] if t["value"] >= best - 0.02]
    assert out["best_trial"]["number"] == min(near, key=lambda t: (t["second"], -t["value"]))["number"]
    assert "pareto_front.png" in {a.path for a in MlflowClient().list_artifacts(out["run_id"])}
    assert out["second_metric"] == "model_parameters" and "within 0.02" in out["rule"]
