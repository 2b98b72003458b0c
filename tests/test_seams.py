"""The seams between layers: typed references between tasks, one plan per command, one event path
(the direction of imports is tests/test_purity.py's)."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest
import torch

from flows import plans
from tasks import events
from tasks.chain.augment import augment
from tasks.chain.ingest import ingest
from tasks.chain.normalize import normalize
from tasks.chain.refs import AugmentedRef, DatasetRef, ManifestRef, StatsRef
from tasks.chain.split import merge_val, split
from trainlib.config import load_config, override
from trainlib.ensemble import EnsembleConfig
from trainlib.errors import ConfigError
from trainlib.tuning import SearchConfig


@pytest.fixture(scope="module")
def prepared():
    """ingest -> split -> normalize of the default config, as plain functions (no Prefect API needed)."""
    cfg = load_config(None, [])
    dataset = ingest.fn(cfg.data)
    manifest = split.fn(dataset, cfg.split)
    return cfg, dataset, manifest, normalize.fn(dataset, manifest, cfg.normalize, 0)


def test_label_noise_changes_the_split_not_the_ingest(prepared):
    from tasks.chain.ingest import ingest_key

    cfg, dataset, manifest, _ = prepared
    noisy_cfg = override(cfg, {"data.label_noise": 0.25})
    assert ingest_key(noisy_cfg.data) == ingest_key(cfg.data)  # the same data is read: not ingested again
    noisy = split.fn(dataset, noisy_cfg.split, noisy_cfg.data.label_noise)
    assert noisy.digest != manifest.digest and noisy.counts == manifest.counts  # another manifest, the same split
    rows = noisy.load()
    assert (rows["label"] != rows["clean_label"]).sum() == round(0.25 * manifest.counts["train"])


def test_the_stage_references_load_what_they_name(prepared, digits):
    cfg, dataset, manifest, stats = prepared
    assert isinstance(dataset, DatasetRef) and isinstance(manifest, ManifestRef) and isinstance(stats, StatsRef)
    ds = dataset.load()
    assert torch.equal(ds.inputs, digits.inputs) and ds.digest == dataset.digest == digits.digest
    assert (dataset.samples, dataset.classes, dataset.shape) == (len(digits), tuple(digits.classes), (1, 8, 8))
    m = manifest.load()
    assert len(m) == dataset.samples and sum(manifest.counts.values()) == dataset.samples
    assert manifest.counts == {s: int((m["split"] == s).sum()) for s in ("train", "val", "test")}
    assert stats.method == cfg.normalize.method == stats.load().method
    merged = merge_val.fn(manifest)
    counts = manifest.counts
    assert merged.counts == {"train": counts["train"] + counts["val"], "val": 0, "test": counts["test"]}
    assert merged.digest != manifest.digest


def test_references_survive_the_serializers_prefect_and_dask_use(prepared):
    """Cached task results are pickled by Prefect, and task arguments are cloudpickled to Dask workers."""
    _, dataset, manifest, stats = prepared
    for ref in (dataset, manifest, stats, AugmentedRef(False)):
        for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
            back = loads(dumps(ref))
            assert back == ref and type(back) is type(ref)
    with pytest.raises(AttributeError):
        dataset.path = "elsewhere"  # frozen: a reference names one file for good


def test_the_expanded_train_split_is_written_whole_and_named_by_what_it_is_made_of(prepared, tmp_path):
    cfg, dataset, manifest, _ = prepared
    run_id = _run()
    aug = override(cfg, {"augment.rotation": 10, "augment.expand": 1}).augment
    for ws in "abcd":
        (tmp_path / ws).mkdir()  # each run's workspace exists before its tasks write there
    first = augment.fn(aug, dataset, manifest, 0, str(tmp_path / "a"), run_id)
    again = augment.fn(aug, dataset, manifest, 0, str(tmp_path / "b"), run_id)  # another workspace
    other = augment.fn(aug, dataset, manifest, 1, str(tmp_path / "c"), run_id)  # another seed
    assert first.expanded != again.expanded and first.digest == again.digest != other.digest
    expanded = first.load()
    assert len(expanded) == 2 * manifest.counts["train"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["augmentation_preview.png", "train_expanded.pt"]
    off = augment.fn(cfg.augment, dataset, manifest, 0, str(tmp_path / "d"), run_id)
    assert off.load() is None and off.digest is None and not off.active


def _run() -> str:
    from tasks import tracking

    return tracking.start_run("seams", "seams", {}, {})


def test_events_reach_the_listeners_of_the_block_only():
    heard, other = [], []
    with events.listening(heard.append):
        events.emit(events.Finished("a"))
        with events.listening(other.append):
            events.emit(events.Epoch("r", 1, {}))
    events.emit(events.Finished("after"))
    assert heard == [events.Finished("a"), events.Epoch("r", 1, {})]
    assert other == [events.Epoch("r", 1, {})]


def test_a_listener_that_raises_stops_what_emitted():
    def refuse(event):
        raise RuntimeError("stop")

    with events.listening(refuse), pytest.raises(RuntimeError, match="stop"):
        events.EpochEvents("r").on_epoch_end(1, {"train_loss": 1.0})


@pytest.mark.parametrize("make, message", [
    (lambda c: plans.run(override(c, {"transfer.source": "x.pt"})), "trainflow run` trains from fresh weights"),
    (lambda c: plans.transfer(c), "transfer.source: give the model to start from"),
    (lambda c: plans.compare(c, {"data.source": ["csv"]}), "--vary data.source: cannot vary"),
    (lambda c: plans.compare(c, {"optimizer.lr": [-1]}), "--vary optimizer.lr=-1"),
    (lambda c: plans.compare(c, {"optimizer.name": ["sgd", "adam"]}, margins={"test_acc": 0.01}),
     "--margin test_acc: not a measure"),
    (lambda c: plans.compare(c, {"optimizer.name": ["sgd", "adam"]}, margins={"test_loss": -1}),
     "--margin test_loss=-1: give a number above 0"),
    (lambda c: plans.compare(override(c, {"split.val": 0, "split.train": 0.85,
                                                   "training.early_stopping.enabled": False}), {"optimizer.lr": [0.1]}),
     "split.val: compare scores on the validation split"),
    (lambda c: plans.compare(c, {"optimizer.lr": [0.1]}, runner="spark"), "--runner 'spark': not a task runner"),
    (lambda c: plans.compare(c, {"optimizer.lr": [0.1, 0.2]}, baseline="0.3"),
     "--baseline '0.3': not a variant; the variants are optimizer.lr=0.1, optimizer.lr=0.2"),
    (lambda c: plans.compare(c, {"optimizer.lr": [0.1]}, resplit=True), "--resplit: .* needs --repeats 2 or more"),
    (lambda c: plans.tune(c, SearchConfig(space={"model.dropout": {"type": "float", "low": 0, "high": 2}})),
     "search.space model.dropout=2"),
    (lambda c: plans.ensemble(c, EnsembleConfig(method="stacking", configs=[{"model.name": "mlp"},
                                                                            {"split.seed": 3}])),
     "its split section differs"),
])
def test_each_plan_refuses_bad_input_with_one_message(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make(load_config(None, []))


def test_plans_are_what_the_flows_run():
    cfg = load_config(None, [])
    compare = plans.compare(cfg, {"optimizer.name": ["sgd", "adam"], "model.dropout": [0.0]}, max_parallel=4)
    assert [v.label for v in compare.variants] == ["optimizer.name=sgd, model.dropout=0.0",
                                                   "optimizer.name=adam, model.dropout=0.0"]
    assert [v.config.optimizer.name for v in compare.variants] == ["sgd", "adam"] and compare.parallel == 2
    assert compare.repeats == 1 and [r.name for r in compare.runs] == [v.label for v in compare.variants]
    boosting = plans.ensemble(cfg, EnsembleConfig(method="boosting", members=3, max_parallel=3))
    assert boosting.parallel == 1 and [m.config.training.seed for m in boosting.members] == [0, 1, 2]
    study = plans.tune(cfg, SearchConfig(n_trials=3, max_parallel=8,
                                         space={"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1}}))
    assert study.parallel == 3 and study.name == "digits-cnn-study"
    assert study.trial_base.training.early_stopping.monitor == "val_accuracy"


@pytest.mark.parametrize("resplit", [False, True])
def test_repeats_are_paired_across_variants(resplit):
    cfg = override(load_config(None, []), {"training.seed": 7, "split.seed": 3})
    plan = plans.compare(cfg, {"optimizer.name": ["sgd", "adam"]}, repeats=3, resplit=resplit, baseline="adam")
    assert plan.baseline == "optimizer.name=adam" and len(plan.runs) == 6
    for r in plan.runs:  # repeat i: the same seeds for every variant
        assert r.config.optimizer.name == r.overrides["optimizer.name"]
        assert r.config.training.seed == 7 + r.repeat
        assert r.config.split.seed == (3 + r.repeat if resplit else 3)
        assert r.name == f"{r.label} #{r.repeat}"
    assert plan.split_seeds == ([3, 4, 5] if resplit else [3])


def test_a_split_logged_by_two_runs_at_once_is_one_dataset_both_runs_name(prepared):
    """MLflow looks a run's datasets up, then inserts the missing ones: another run's insert committed in
    between made the later insert fail on the unique (experiment, name, digest) (CI: four flows at once, one
    failed). Here the other run's write comes exactly there, on its own connection to the same store."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from tasks import tracking

    _, dataset, manifest, _ = prepared
    rows, client, source = manifest.load(), tracking.client(), manifest.path
    experiment = tracking.experiment_id("seams-concurrent-datasets")
    mine, other = (client.create_run(experiment).info.run_id for _ in range(2))
    raced = []

    def the_other_run_logs_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("INSERT INTO datasets") and not raced:
            raced.append(statement)  # before the call: its own inserts pass through
            tracking.log_manifests(other, rows, source, dataset.digest)

    event.listen(Engine, "before_cursor_execute", the_other_run_logs_first)
    try:
        tracking.log_manifests(mine, rows, source, dataset.digest)
    finally:
        event.remove(Engine, "before_cursor_execute", the_other_run_logs_first)
    assert raced, "the store never inserted a dataset: the race was not staged"
    named = {run: sorted((i.dataset.name, i.tags[0].value) for i in client.get_run(run).inputs.dataset_inputs)
             for run in (mine, other)}
    digest = dataset.digest[:12]
    assert named[mine] == named[other] == [(f"test-{digest}", "testing"), (f"train-{digest}", "training"),
                                           (f"val-{digest}", "validation")]


def _untyped() -> set[str]:
    """`path:function name` of every @task/@flow function in tasks/ and flows/ whose return or parameter annotation
    has a bare `dict` (dict, list[dict], dict | None; not dict[str, float], a mapping whose keys are data)."""
    import ast
    import re
    from pathlib import Path

    root, found = Path(__file__).resolve().parents[1], set()
    for file in [*(root / "tasks").rglob("*.py"), *(root / "flows").rglob("*.py")]:
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            decorators = {getattr(d.func if isinstance(d, ast.Call) else d, "id", None) for d in node.decorator_list}
            if not decorators & {"task", "flow"}:
                continue
            annotated = [("return", node.returns),
                         *((a.arg, a.annotation) for a in [*node.args.args, *node.args.kwonlyargs])]
            found |= {f"{file.relative_to(root)}:{node.name} {name}" for name, annotation in annotated
                      if annotation is not None and re.search(r"\bdict\b(?!\[)", ast.unparse(annotation))}
    return found


def test_no_task_or_flow_returns_or_takes_an_untyped_dict():
    """Results pass between tasks, flows and the CLI as types (tasks/results.py); JSON is made by their `json()`."""
    assert sorted(_untyped()) == []
