"""The training pipeline end to end: a real Prefect API (test harness) and a real MLflow SQLite store."""

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from trainlib.config import flatten, load_config
from trainlib.scoring import InputSpec

NAME = "flow-e2e"
EPOCHS = 4
EPOCH_METRICS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "penalty", "updates",
                 "epoch_seconds", "samples_per_second"]
ARTIFACTS = ["config.yaml", "normalization.json", "split_manifest.csv", "augmentation_preview.png",
             "learning_curves.png", "lr_schedule.png", "confusion_matrix.png", "classification_report.json",
             "checkpoints/checkpoint.pt"]
DIGITS = InputSpec([str(d) for d in range(10)], [1, 8, 8], True, [], 16.0, [4.9], [6.0])  # what the versions take


def _config(*overrides):
    return load_config(None, [f"name={NAME}", f"training.epochs={EPOCHS}", "training.early_stopping.patience=10",
                              "schedule.name=cosine", "augment.rotation=10", "regularization.l2=1e-4", *overrides])


@pytest.fixture(scope="module")
def first(prefect_api):
    from flows.training import training_pipeline

    return training_pipeline(_config()).json()


def _artifacts(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_run_records_params_tags_metrics_and_datasets(first):
    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == NAME
    expected = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flatten(_config()).items()}
    assert run.data.params == expected
    tags = run.data.tags
    assert tags["prefect.flow_run_id"]
    assert tags["prefect.flow_run_name"] == f"{NAME}: cnn, adam at lr 0.001, schedule cosine, on digits"
    assert len(tags["dataset.digest"]) == 64 and tags["gate"] == "promoted"
    # the code it ran: commit, whether tracked files differed from it, package versions, the CPU's vector unit
    import torch

    assert tags["mlflow.source.git.commit"] == subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                               text=True, check=True).stdout.strip()
    assert tags["trainflow.code.dirty"] in ("true", "false") and tags["trainflow.version.torch"] == torch.__version__
    assert tags["trainflow.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {f"trainflow.version.{p}" for p in ("trainflow", "torchvision", "mlflow", "prefect")} <= set(tags)
    for name in EPOCH_METRICS:
        history = client.get_metric_history(first["run_id"], name)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), name
    for name in ["test_accuracy", "test_loss", "test_f1", "test_precision", "test_recall", "test_ece", "best_epoch",
                 "stopped_epoch"]:
        assert name in run.data.metrics
    lrs = [m.value for m in client.get_metric_history(first["run_id"], "lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)  # cosine decays
    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert contexts == ["testing", "training", "validation"]
    assert first["metrics"]["test_accuracy"] == run.data.metrics["test_accuracy"] >= 0.9


def test_run_has_every_artifact_and_the_model(first):
    client = MlflowClient()
    assert set(ARTIFACTS) <= set(_artifacts(client, first["run_id"]))
    with open(client.download_artifacts(first["run_id"], "classification_report.json")) as f:
        report = json.load(f)
    assert set(report) >= {str(d) for d in range(10)} | {"macro avg"}
    model = client.get_logged_model(first["model_uri"].removeprefix("models:/"))
    assert model.source_run_id == first["run_id"]


def test_registered_champion_and_worse_challenger(first, prefect_api):
    from flows.training import training_pipeline

    client = MlflowClient()
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert int(champion.version) == first["version"] and champion.tags["gate"] == "promoted"
    worse = training_pipeline(_config("training.epochs=1", "optimizer.lr=1e-5", "augment.rotation=0")).json()
    assert worse["alias"] == "challenger" and not worse["gate"]["passed"]
    accuracy = worse["metrics"]["test_accuracy"]
    assert worse["gate"]["reason"] == (f"kept as challenger: below the gate ({accuracy:.4f} < "
                                       "register.min_test_accuracy 0.9)")
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == worse["version"]
    assert client.get_run(worse["run_id"]).data.tags["gate"] == "below_minimum"


def test_a_run_tying_the_champion_stays_challenger(first, prefect_api):
    from flows.training import training_pipeline

    client = MlflowClient()
    champion = int(client.get_model_version_by_alias(NAME, "champion").version)
    tie = training_pipeline(_config()).json()  # the same config and seed on CPU: the same test accuracy
    assert tie["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]
    assert tie["alias"] == "challenger" and tie["gate"]["outcome"] == "not_better" and type(tie["version"]) is int
    assert tie["gate"]["test"] == "mcnemar"  # the default gate: the same test samples, no disagreement
    assert re.fullmatch(rf"kept as challenger \(not better than version {champion} on the same \d+ test samples: 0 "
                        r"right where it was wrong, 0 the other way; McNemar p 1 >= 0\.05\)", tie["gate"]["reason"])
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == champion
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == tie["version"] != champion


def test_the_alias_moves_only_to_a_version_better_by_more_than_min_delta(first, prefect_api):
    from tasks.registry.register import promote
    from trainlib.config import RegisterConfig

    client, gate = MlflowClient(), RegisterConfig(min_test_accuracy=0.5, min_delta=0.001, gate="delta")
    experiment = client.get_experiment_by_name(NAME).experiment_id
    outcomes = []
    for accuracy in [0.95, 0.95, 0.9505, 0.96, 0.9605]:
        run_id = client.create_run(experiment).info.run_id
        registered = promote("delta", gate, first["model_uri"], accuracy, run_id, DIGITS)
        outcomes.append((registered.version, registered.alias, registered.gate.champion_version))
        assert client.get_run(run_id).data.tags["registered_alias"] == registered.alias
    assert outcomes == [(1, "champion", None), (2, "challenger", 1), (3, "challenger", 1), (4, "champion", 1),
                        (5, "challenger", 4)]
    assert int(client.get_model_version_by_alias("delta", "champion").version) == 4


def test_flows_registering_at_the_same_moment_leave_the_alias_on_the_best(first, prefect_api):
    from tasks.registry.register import promote
    from trainlib.config import RegisterConfig

    client = MlflowClient()
    accuracies = [0.91, 0.97, 0.93, 0.95, 0.92, 0.96]
    runs = [client.create_run(client.get_experiment_by_name(NAME).experiment_id).info.run_id for _ in accuracies]
    start = threading.Barrier(len(accuracies))

    def register(accuracy, run_id):
        start.wait()  # every flow reads the alias holder at about the same time
        return promote("race", RegisterConfig(min_test_accuracy=0.5, gate="delta"), first["model_uri"], accuracy,
                       run_id, DIGITS)

    with ThreadPoolExecutor(len(accuracies)) as pool:
        results = list(pool.map(register, accuracies, runs))
    champion = client.get_model_version_by_alias("race", "champion")
    assert float(champion.tags["test_accuracy"]) == max(accuracies), [(r.version, r.gate) for r in results]
    assert sum(r.alias == "champion" for r in results) >= 1 and len({r.version for r in results}) == 6


def _task_runs(flow_run_id: str, expect: tuple[str, ...] = ()) -> list:
    """The flow run's task runs, once those named in `expect` are there in a final state: the API records task runs
    from the events the flow's process sends, a moment after they happen (more under load)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            final = {r.name.rsplit("-", 1)[0] for r in runs if r.state and r.state.is_final()}
            if set(expect) <= final or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


def _task_states(summary: dict, expect: tuple[str, ...] = ("ingest", "split", "normalize", "train")) -> dict[str, str]:
    flow_run_id = MlflowClient().get_run(summary["run_id"]).data.tags["prefect.flow_run_id"]
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in _task_runs(flow_run_id, expect)}


def test_rerun_hits_the_cache_for_data_stages(first, prefect_api, home):
    from flows.training import training_pipeline

    again = training_pipeline(_config()).json()
    states = _task_states(again)
    assert states["ingest"] == states["split"] == states["normalize"] == "Cached"
    assert states["train"] == "Completed"
    refreshed = training_pipeline(_config(), refresh=True).json()
    assert _task_states(refreshed)["ingest"] == "Completed"
    assert refreshed["metrics"]["test_accuracy"] == again["metrics"]["test_accuracy"]
    shutil.rmtree(Path(home) / "cache")  # a wiped cache must recompute, not point at deleted files
    wiped = training_pipeline(_config()).json()
    assert _task_states(wiped)["split"] == "Completed"
    assert wiped["metrics"]["test_accuracy"] == again["metrics"]["test_accuracy"]


def test_preflight_reads_what_the_flow_cached_instead_of_the_data(first, monkeypatch):
    """After a run, a command's pre-flight check (flows/preflight.py) finds the ingest and split the flow cached (in
    Prefect's records) and reads no data: what it knows is the cached stages'."""
    from flows import preflight
    from trainlib import recipe

    config = _config()
    split = recipe.split(recipe.ingest(config.data), config.split)["split"].value_counts()
    monkeypatch.setattr(recipe, "ingest", lambda *a, **k: pytest.fail("the data was read again"))
    monkeypatch.setattr(recipe, "split", lambda *a, **k: pytest.fail("the data was split again"))
    cached = preflight.data(config)
    assert cached.classes == tuple(str(d) for d in range(10)) and cached.shape == (1, 8, 8)
    assert cached.counts == {str(k): int(v) for k, v in split.items()}


def test_champion_predicts_raw_digits_in_a_fresh_process(first, home):
    code = f"""
import json, mlflow, numpy as np
from mlflow import MlflowClient
from sklearn.datasets import load_digits
model = mlflow.pyfunc.load_model("models:/{NAME}@champion")
version = MlflowClient().get_model_version_by_alias("{NAME}", "champion")
manifest = __import__("pandas").read_csv(MlflowClient().download_artifacts(version.run_id, "split_manifest.csv"))
test = manifest[manifest["split"] == "test"]
x, y = load_digits(return_X_y=True)
raw = x[test["index"].to_numpy()].reshape(-1, 1, 8, 8).astype(np.float32)   # 0..16, not normalized
logits = model.predict(raw)
print(json.dumps({{"accuracy": float((logits.argmax(1) == y[test["index"].to_numpy()]).mean()),
                  "run_accuracy": MlflowClient().get_run(version.run_id).data.metrics["test_accuracy"]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(result["run_accuracy"], abs=1e-9)


def test_signals_through_the_pipeline_and_the_registered_cnn1d_in_a_fresh_process(prefect_api, home):
    from flows.training import training_pipeline

    out = training_pipeline(load_config(None, [
        "name=flow-signals", "data.source=waveforms", "model.name=cnn1d", "model.channels=[8,16]",
        "training.epochs=3", "augment.translate=0.2", "augment.amplitude=0.2", "register.min_test_accuracy=0"])).json()
    assert out["alias"] == "champion" and out["metrics"]["test_accuracy"] > 0.3  # chance: 0.2
    assert "augmentation_preview.png" in _artifacts(MlflowClient(), out["run_id"])
    card = MlflowClient().get_model_version("flow-signals", str(out["version"])).description  # a card, signals too
    assert card.startswith("# Model card: flow-signals version") and "- source: waveforms" in card
    assert "| test | " in card and "`model.channels`: [8, 16] (default [32, 64])" in card  # cnn1d: waveforms' default
    code = """
import json, mlflow, numpy as np, pandas as pd
from mlflow import MlflowClient
from trainlib.data.signals import waveform_labels, waveforms
model = mlflow.pyfunc.load_model("models:/flow-signals@champion")
version = MlflowClient().get_model_version_by_alias("flow-signals", "champion")
manifest = pd.read_csv(MlflowClient().download_artifacts(version.run_id, "split_manifest.csv"))
rows = manifest[manifest["split"] == "test"]["index"].to_numpy()
logits = model.predict(waveforms()[rows])   # raw signals (N, 1, 128): normalization is inside the model
labels = waveform_labels()[rows]   # the source's classes in WAVE_CLASSES order
print(json.dumps({"accuracy": float((logits.argmax(1) == labels).mean()),
                  "run_accuracy": MlflowClient().get_run(version.run_id).data.metrics["test_accuracy"]}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(result["run_accuracy"], abs=1e-9)


def test_failed_flow_marks_the_run_failed(prefect_api, tmp_path):
    from flows.training import training_pipeline

    no_target = tmp_path / "no-target.csv"  # it exists (the plan checks that), and fails to load in the flow
    no_target.write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(30)))
    with pytest.raises(Exception, match="no class column"):
        training_pipeline(load_config(None, ["name=flow-fail", "data.source=csv", f"data.path={no_target}",
                                             "model.name=mlp"])).json()
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("flow-fail").experiment_id])[0]
    assert run.info.status == "FAILED" and "no class column" in run.data.tags["failure_reason"]
    assert client.search_registered_models(filter_string="name='flow-fail'") == []


def test_prefect_artifacts_summarize_the_run(first, prefect_api):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    flow_run_id = MlflowClient().get_run(first["run_id"]).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:  # later runs of the experiment reuse the keys: take this run's
        found = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{NAME}-summary", f"{NAME}-epochs"])))
            if str(a.flow_run_id) == flow_run_id}
    summary, table = found[f"{NAME}-summary"], found[f"{NAME}-epochs"]
    assert summary.type == "markdown" and first["gate"]["reason"] in summary.data and first["run_id"] in summary.data
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))


def test_train_retry_resumes_from_the_checkpoint(prefect_api):
    from flows.training import training_pipeline
    from tasks import events

    class CrashOnce:  # the first attempt fails at the end of epoch 4, before that epoch is checkpointed
        crashed = False

        def __call__(self, event):
            if isinstance(event, events.Epoch) and event.epoch == 4 and not CrashOnce.crashed:
                CrashOnce.crashed = True
                raise RuntimeError("simulated crash")

    cfg = load_config(None, ["name=flow-retry", "training.epochs=6", "training.early_stopping.enabled=false"])
    with events.listening(CrashOnce()):
        resumed = training_pipeline(cfg).json()
    states = _task_states(resumed)
    assert CrashOnce.crashed and states["train"] == "Completed"
    steps = [m.step for m in MlflowClient().get_metric_history(resumed["run_id"], "train_loss")]
    assert steps == [1, 2, 3, 4, 4, 5, 6]  # epoch 4 ran twice (crashed once); 1-3 came from the checkpoint
    straight = training_pipeline(load_config(None, ["name=flow-retry-ref", "training.epochs=6",
                                                    "training.early_stopping.enabled=false"])).json()
    assert resumed["metrics"]["test_loss"] == pytest.approx(straight["metrics"]["test_loss"], rel=1e-6)


def test_a_diverging_loss_fails_once_without_retries_and_registers_nothing(prefect_api):
    from flows.training import training_pipeline

    good = ["name=flow-nan", "model.name=mlp", "training.epochs=2", "register.min_test_accuracy=0"]
    champion = training_pipeline(load_config(None, good)).json()
    cfg = load_config(None, good + ["optimizer.name=sgd", "optimizer.lr=1e12", "optimizer.momentum=0.0",
                                    "training.epochs=3"])
    with pytest.raises(Exception, match=r"NaN or infinite in epoch 1 at batch \d+"):
        training_pipeline(cfg).json()
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("flow-nan").experiment_id], max_results=1)[0]
    assert run.info.run_id != champion["run_id"]
    assert run.info.status == "FAILED" and "NaN or infinite in epoch 1 at batch" in run.data.tags["failure_reason"]
    assert [v.version for v in client.search_model_versions("name='flow-nan'")] == [1]  # nothing registered
    assert client.get_model_version_by_alias("flow-nan", "champion").run_id == champion["run_id"]  # untouched
    runs = {r.name.rsplit("-", 1)[0]: r for r in _task_runs(run.data.tags["prefect.flow_run_id"], ("train",))}
    assert runs["train"].state.name == "Failed" and "evaluate" not in runs
    assert runs["train"].run_count == 1  # not retried: the same seed would diverge the same way


def test_a_deleted_experiment_is_a_readable_error(prefect_api):
    from tasks import tracking
    from trainlib.errors import ConfigError

    client = MlflowClient()
    client.delete_experiment(tracking.experiment_id("flow-deleted"))
    with pytest.raises(ConfigError, match="experiment 'flow-deleted' was deleted; restore it"):
        tracking.experiment_id("flow-deleted")


def test_streamed_imagefolder_through_the_flow_with_loader_workers(prefect_api, tmp_path):
    from conftest import write_images

    from flows.training import training_pipeline

    root = write_images(tmp_path / "img", per_class=12)
    out = training_pipeline(load_config(None, [
        "name=flow-stream", "data.source=imagefolder", f"data.path={root}", "data.image_size=[16,16]",
        "data.stream=true", "data.workers=1", "training.epochs=3", "training.batch_size=8", "augment.hflip=0.5",
        "split.train=0.5", "split.val=0.25", "split.test=0.25", "register.min_test_accuracy=0"])).json()
    assert out["alias"] == "champion" and 0 <= out["metrics"]["test_accuracy"] <= 1
    steps = [m.step for m in MlflowClient().get_metric_history(out["run_id"], "val_loss")]
    assert steps == [1, 2, 3]


def test_a_run_whose_set_up_breaks_off_is_failed_not_left_running(prefect_api):
    from tasks import tracking

    with pytest.raises(Exception, match="Invalid"):  # an invalid param name: MLflow refuses the batch
        tracking.start_run("setup-breaks", "broken", {"lr": 0.1, "bad key!": 1}, {})
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("setup-breaks").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"] and "Invalid" in runs[0].data.tags["failure_reason"]


def test_a_tested_gate_compares_two_versions_on_the_same_test_samples(prefect_api, tmp_path):
    """register.gate mcnemar: each run logs which test samples it got right; the second version is compared with
    the champion on the samples they disagree on, and the counts, p and decision land in tags and the history."""
    import numpy as np
    from scipy import stats

    from cli.models import history_table
    from flows.training import training_pipeline
    from tasks.registry import aliases

    tested = ["name=flow-mcnemar", "register.gate=mcnemar", "training.early_stopping.enabled=false",
              "register.min_test_accuracy=0"]
    first = training_pipeline(load_config(None, [*tested, "training.epochs=1", "optimizer.lr=0.0003"])).json()
    assert first["alias"] == "champion"  # nothing held the alias: nothing to test against
    second = training_pipeline(load_config(None, [*tested, "training.epochs=6"])).json()
    gate, client = second["gate"], MlflowClient()
    right = {}
    for run in (second, first):  # the counts, recomputed from what each run logged
        with np.load(client.download_artifacts(run["run_id"], "test_outcomes.npz", str(tmp_path / run["run_id"]))) as f:
            right[run["run_id"]] = dict(zip(f["rows"].tolist(), f["correct"].tolist(), strict=True))
    new, old = right[second["run_id"]], right[first["run_id"]]
    b, c = sum(new[r] and not old[r] for r in new), sum(old[r] and not new[r] for r in new)
    assert gate["test"] == "mcnemar" and (gate["b"], gate["c"]) == (b, c) and b + c > 0
    assert gate["p"] == pytest.approx(stats.binomtest(b, b + c, alternative="greater").pvalue if b else 1.0)
    assert gate["passed"] and b > c and gate["p"] < 0.05, (b, c)  # 6 epochs at 0.001 against 1 at 0.0003: promoted
    assert f"on the same {len(new)} test samples: {b} right where it was wrong, {c} the other way" in gate["reason"]
    tags = client.get_model_version("flow-mcnemar", str(second["version"])).tags
    assert (tags["gate_test"], tags["mcnemar_b"], tags["mcnemar_c"]) == ("mcnemar", str(b), str(c))
    assert aliases.history("flow-mcnemar")[-1].reason == gate["reason"]
    printed = history_table(aliases.history("flow-mcnemar"))  # what `trainflow models flow-mcnemar --history` prints
    assert f"{b} right where it was wrong, {c} the other way; McNemar p" in printed
