"""Batch scoring end to end: models trained and registered through the pipeline (real Prefect API, real MLflow
store), scored by the batch-predict flow and by `trainflow predict` as a process; predictions compared with the
registered model loaded by MLflow on the same rows, prepared independently here."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TRAINFLOW, cli_env
from mlflow import MlflowClient
from PIL import Image

from trainlib.config import load_config, override
from trainlib.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PNG = str(ROOT / "configs" / "data" / "digits-png")
QUICK = ["model.name=mlp", "model.hidden=[32]", "training.epochs=4", "register.min_test_accuracy=0"]


def _train(*overrides):
    from flows.training import training_pipeline

    return training_pipeline(load_config(None, [*QUICK, *overrides])).json()


@pytest.fixture(scope="module")
def folder_model(prefect_api):
    """A model trained on the PNG folder at 8x8 grayscale."""
    return _train("name=pred-images", "data.source=imagefolder", f"data.path={PNG}",
                  "data.image_size=[8, 8]", "data.channels=1", "training.epochs=30")


@pytest.fixture(scope="module")
def digits_model(prefect_api):
    """A model trained on the embedded digits (values 0..16), as `make run` trains one."""
    return _train("name=pred-digits")


def _predict(model: str, **kwargs) -> dict:
    from flows.predict import batch_predict

    return batch_predict(model, **kwargs).json()


def _decoded(path) -> np.ndarray:
    """An image as the folder source prepares it, written out here: grayscale, bilinear to 8x8, raw 0..255."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32)[None]


def test_a_flat_folder_is_scored_file_by_file_and_a_corrupt_file_is_listed(folder_model, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    originals = [p for c in ("1", "4", "8") for p in sorted((ROOT / PNG / c).iterdir())[:5]]
    for p in originals:
        shutil.copy(p, flat / f"{p.parent.name}-{p.name}")
    (flat / "corrupt.png").write_bytes(b"\x89PNG but not really")
    out = _predict("models:/pred-images@champion", data=str(flat), out=str(tmp_path / "scored.parquet"))
    assert out["rows"] == 15 and out["errors"] == 1 and out["model"]["version"] == folder_model["version"]
    errors = pd.read_csv(out["errors_file"])
    assert errors["id"].tolist() == ["corrupt.png"] and "cannot read image" in errors["reason"][0]
    table = pd.read_parquet(out["out"])
    names = sorted(f"{p.parent.name}-{p.name}" for p in originals)
    assert table["id"].tolist() == names and "label" not in table  # a flat folder has no labels
    loaded = mlflow.pyfunc.load_model(f"models:/pred-images/{folder_model['version']}")
    scores = loaded.predict(np.stack([_decoded(flat / n) for n in names]))
    classes = [str(d) for d in range(10)]
    assert table["predicted"].tolist() == [classes[i] for i in scores.argmax(1)]
    assert np.allclose(table[[f"p_{c}" for c in classes]].sum(1), 1, atol=1e-5)
    run = MlflowClient().get_run(out["run_id"])
    tags = run.data.tags
    assert tags["trainflow.kind"] == "prediction" and tags["model.name"] == "pred-images"
    assert tags["model.version"] == str(folder_model["version"]) and tags["model.aliases"] == "champion"
    assert tags["unreadable_rows"] == "1" and len(tags["dataset.digest"]) == 64 and tags["drift"] == "false"
    assert run.data.metrics["rows"] == 15 and run.data.metrics["errors"] == 1
    assert run.data.metrics["drift_shift.channel_0"] == pytest.approx(out["drift"]["shift"][0])
    assert run.data.metrics["input_mean.channel_0"] == pytest.approx(out["drift"]["mean"][0])
    assert run.info.experiment_id == MlflowClient().get_run(folder_model["run_id"]).info.experiment_id
    artifacts = {a.path for a in MlflowClient().list_artifacts(out["run_id"])}
    assert {"scored.parquet", "scored.parquet.errors.csv", "summary.json", "drift.png"} <= artifacts


def test_labelled_folders_give_accuracy_and_a_confusion_matrix(folder_model, tmp_path):
    out = _predict("models:/pred-images@champion", data=PNG, out=str(tmp_path / "all.csv"))
    table = pd.read_csv(out["out"])
    assert out["rows"] == 300 and (table["label"].astype(str) == table["id"].str.split("/").str[0]).all()
    accuracy = float((table["label"].astype(str) == table["predicted"].astype(str)).mean())
    assert out["metrics"]["accuracy"] == pytest.approx(accuracy) and accuracy > 0.5  # chance is 0.1
    assert "confusion_matrix.png" in {a.path for a in MlflowClient().list_artifacts(out["run_id"])}


def test_data_at_another_scale_raises_the_drift_flag(digits_model, digits, tmp_path):
    same = _predict("models:/pred-digits@champion", config=str(ROOT / "configs" / "default.yaml"))
    assert not same["drift"]["drifted"] and same["drift"]["score"] < 0.1 and same["metrics"]["accuracy"] > 0.8
    folder = _predict("models:/pred-digits@champion", data=PNG)  # the same digits as PNGs: 0..255, not 0..16
    assert folder["drift"]["drifted"] and folder["drift"]["score"] > 3
    pixels = digits.inputs.reshape(len(digits), -1).numpy() * 16.0  # a table of the digits at 16x the scale
    pd.DataFrame(pixels, columns=[f"p{i}" for i in range(64)]).to_csv(tmp_path / "scaled.csv", index=False)
    table = _predict("models:/pred-digits@champion", data=str(tmp_path / "scaled.csv"))
    assert table["drift"]["drifted"] and table["rows"] == len(digits)
    assert MlflowClient().get_run(table["run_id"]).data.tags["drift"] == "true"
    lenient = _predict("models:/pred-digits@champion", data=str(tmp_path / "scaled.csv"),
                       overrides={"predict.drift_threshold": 1000})
    assert not lenient["drift"]["drifted"]  # the threshold is the config's


def test_what_scoring_refuses_before_it_starts(digits_model, tmp_path):
    from tasks.scoring.plan import plan
    from trainlib.config import PipelineConfig

    cfg = PipelineConfig()
    cases = {("models:/pred-digits@nobody", PNG, False, None): r"pred-digits has no alias @nobody; its aliases: "
                                                                r"@champion \(version 1\)",
             ("models:/pred-digits/99", PNG, False, None): "pred-digits has no version 99; its versions: 1",
             ("models:/no-such-model@champion", PNG, False, None): "no registered model 'no-such-model'",
             ("pred-digits", PNG, False, None): "give models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID",
             ("runs:/" + "0" * 32, PNG, False, None): "no run 0{32} in this project's MLflow store",
             ("models:/m-" + "0" * 32, PNG, False, None): "no logged model m-0{32} in this project's MLflow store",
             ("models:/pred-digits@champion", PNG, True, None): "--data PATH .* or --config FILE .*, not both",
             ("models:/pred-digits@champion", None, False, None): "give the data to score",
             ("models:/pred-digits@champion", PNG, False, "x.json"): "give a .parquet or .csv file"}
    for (model, data, from_config, out), message in cases.items():
        with pytest.raises(ConfigError, match=message):
            plan(model, data, cfg, from_config, out)
    with pytest.raises(ConfigError, match=r"predict.device: 'cuda:99' asked for, but "):  # none here has 100
        plan("models:/pred-digits@champion", PNG, override(cfg, {"predict.device": "cuda:99"}), False, None)


def test_an_unregistered_model_is_named_as_its_summary_prints_it_or_by_its_run(prefect_api, digits, tmp_path):
    """--no-register: the URI the summary prints (MLflow's id of the logged model) and runs:/RUN_ID, which the
    README names, both name the run's model for predict and transfer.source (serve-model resolves them the same
    way: tests/test_serving.py serves one by runs:/RUN_ID)."""
    from tasks.registry.model_ref import download_source
    from tasks.results import Registration

    trained = _train("name=pred-unregistered", "register.enabled=false")
    printed = Registration.from_json(trained).line().rsplit(" ", 1)[1]  # the line `trainflow run` prints
    assert printed.startswith("models:/m-"), printed
    expected = mlflow.pyfunc.load_model(printed).predict(digits.inputs.numpy().astype(np.float32)).argmax(1)
    for i, uri in enumerate([printed, f"runs:/{trained['run_id']}"]):
        out = _predict(uri, config=str(ROOT / "configs" / "default.yaml"), out=str(tmp_path / f"{i}.parquet"))
        assert out["model"] == {"name": "pred-unregistered", "version": None, "alias": None, "aliases": [],
                                "uri": uri}
        assert pd.read_parquet(out["out"])["predicted"].astype(int).tolist() == expected.tolist()
        tags = MlflowClient().get_run(out["run_id"]).data.tags
        assert tags["model.run_id"] == trained["run_id"] and tags["model.version"] == ""
        path, lineage = download_source(uri, tmp_path / f"source-{i}")
        assert lineage == {"source_run_id": trained["run_id"], "source_version": None} and Path(path).is_file()


def test_a_registered_model_names_no_device_and_loads_onto_another(digits_model):
    """Registered on this CPU, a model must score on a GPU: its program names no device, and it loads whole onto
    another device (the meta device, shapes without values, stands in for a GPU on any machine)."""
    import torch

    from tasks.registry.model_ref import load_pyfunc, resolve
    from trainlib.device import pinned

    ref = resolve("models:/pred-digits@champion")
    local = Path(mlflow.artifacts.download_artifacts(ref.pinned))
    assert pinned(torch.export.load(str(local / "data" / "model.pt2")).graph) == []
    program = load_pyfunc(ref, torch.device("meta")).get_raw_model()
    assert program(torch.zeros(3, 1, 8, 8, device="meta")).device.type == "meta"


@pytest.fixture(scope="module")
def table_model(prefect_api, tmp_path_factory):
    """An mlp trained on a CSV table (features x1, x2, x3; target label: a, b, c)."""
    from conftest import tabular_frame

    path = tmp_path_factory.mktemp("table") / "table.csv"
    tabular_frame().to_csv(path, index=False)
    return _train("name=pred-table", "data.source=csv", f"data.path={path}", "training.epochs=40", "optimizer.lr=0.01")


def test_a_scoring_that_fails_midway_leaves_no_predictions_and_a_failed_run(table_model, tmp_path):
    from conftest import tabular_frame

    from trainlib.errors import DataError

    frame = tabular_frame(1200, seed=2)
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[1024:, "x2"] = "tall"  # a column of words in the third chunk of 512 rows: found when it is read
    frame.to_csv(tmp_path / "late.csv", index=False)
    with pytest.raises(DataError, match="not numeric: x2"):
        _predict("models:/pred-table@champion", data=str(tmp_path / "late.csv"), out=str(tmp_path / "late.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.csv"]  # no output, no temporary file
    experiment = MlflowClient().get_run(table_model["run_id"]).info.experiment_id
    last = MlflowClient().search_runs([experiment], "tags.`trainflow.kind` = 'prediction'",
                                      order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert last.info.status == "FAILED" and "not numeric: x2" in last.data.tags["failure_reason"]


def test_the_command_names_a_missing_column_and_exits_2(table_model, tmp_path):
    from conftest import tabular_frame

    tabular_frame(30, seed=1).drop(columns=["x2"]).to_csv(tmp_path / "new.csv", index=False)
    env = cli_env(tmp_path) | {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    bad = subprocess.run([TRAINFLOW, "predict", "--model", "models:/pred-table@champion", "--data",
                          str(tmp_path / "new.csv")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == (f"error: --data {tmp_path / 'new.csv'}: missing feature column x2; the model takes "
                                  "x1, x2, x3")
    assert not (tmp_path / ".trainflow" / "predictions").exists()  # nothing written
    tabular_frame(30, seed=1)[["label", "x3", "x2", "x1"]].to_csv(tmp_path / "shuffled.csv", index=False)
    good = subprocess.run([TRAINFLOW, "predict", "--model", "models:/pred-table@champion", "--data",
                           str(tmp_path / "shuffled.csv"), "--out", str(tmp_path / "p.csv"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert good.returncode == 0, good.stderr
    summary = json.loads(good.stdout)
    assert summary["rows"] == 30 and summary["metrics"]["accuracy"] > 0.6  # three classes: chance is 1/3
    frame = tabular_frame(30, seed=1)
    loaded = mlflow.pyfunc.load_model("models:/pred-table@champion")
    expected = loaded.predict(frame[["x1", "x2", "x3"]].to_numpy(np.float32)).argmax(1)
    assert pd.read_csv(tmp_path / "p.csv")["predicted"].tolist() == [["a", "b", "c"][i] for i in expected]


def test_a_registered_ensemble_scores_the_same_way(prefect_api, digits, tmp_path):
    from flows.ensemble import ensemble_pipeline
    from trainlib.config import validate
    from trainlib.ensemble import EnsembleConfig

    registered = ensemble_pipeline(load_config(None, [*QUICK, "name=pred-bag"]),
                                   validate({"method": "bagging", "members": 2}, EnsembleConfig)).json()
    assert registered["registered_model"] == "pred-bag-ensemble"
    out = _predict("models:/pred-bag-ensemble@champion", config=str(ROOT / "configs" / "default.yaml"),
                   out=str(tmp_path / "ens.parquet"))
    table = pd.read_parquet(out["out"])
    loaded = mlflow.pyfunc.load_model(f"models:/pred-bag-ensemble/{registered['version']}")
    expected = loaded.predict(digits.inputs.numpy().astype(np.float32)).argmax(1)
    assert out["rows"] == len(digits) and table["predicted"].astype(int).tolist() == expected.tolist()
    assert MlflowClient().get_run(out["run_id"]).info.experiment_id == MlflowClient().get_run(
        registered["run_id"]).info.experiment_id  # the ensemble's experiment, pred-bag


def test_a_signature_that_disagrees_with_the_description_is_refused():
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from tasks.registry.model_ref import ModelRef
    from tasks.scoring.plan import _agrees
    from trainlib.scoring import InputSpec

    spec = InputSpec(["0", "1"], [1, 8, 8], True, [], 16.0, [4.0], [6.0])
    ref = ModelRef("models:/x/1", "x", 1, None, (), None)

    def signature(dtype, shape):
        return ModelSignature(Schema([TensorSpec(np.dtype(dtype), shape)]))

    _agrees(ref, spec, signature(np.float32, (-1, 1, 8, 8)))  # as trainflow logs it
    for dtype, shape in ((np.float64, (-1, 1, 8, 8)), (np.float32, (-1, 3, 8, 8))):
        with pytest.raises(ConfigError, match=r"x version 1: its signature takes .* but its description says "
                                              r"float32 of shape \(-1, 1, 8, 8\)"):
            _agrees(ref, spec, signature(dtype, shape))


def test_a_signal_ensemble_scores_an_npz_of_new_signals(prefect_api, tmp_path):
    """Ensembles and batch scoring take signals as they take images: a bagging of two cnn1d on the generated
    waveforms scores new waveforms (another seed) from an .npz, labelled by its y array."""
    from flows.ensemble import ensemble_pipeline
    from trainlib.config import validate
    from trainlib.data.signals import WAVE_CLASSES, write_waveforms
    from trainlib.ensemble import EnsembleConfig

    registered = ensemble_pipeline(load_config(None, [
        "name=pred-waves", "data.source=waveforms", "model.name=cnn1d", "model.channels=[8,16]", "training.epochs=3",
        "register.min_test_accuracy=0"]), validate({"method": "bagging", "members": 2}, EnsembleConfig)).json()
    new = write_waveforms(tmp_path / "new.npz", per_class=20, seed=7)
    out = _predict("models:/pred-waves-ensemble@champion", data=str(new), out=str(tmp_path / "waves.csv"))
    table = pd.read_csv(out["out"])
    with np.load(new) as arrays:
        x, y = arrays["x"], arrays["y"]
    loaded = mlflow.pyfunc.load_model(f"models:/pred-waves-ensemble/{registered['version']}")
    classes = list(WAVE_CLASSES)  # the waveforms source's classes, in its order
    assert out["rows"] == len(table) == 100 and table["label"].tolist() == y.tolist()
    assert table["predicted"].tolist() == [classes[i] for i in loaded.predict(x).argmax(1)]
    accuracy = float((table["label"] == table["predicted"]).mean())
    assert out["metrics"]["accuracy"] == pytest.approx(accuracy) and accuracy > 0.4  # chance is 0.2
    # like a single model (above), it names no device and moves whole: the logged ensemble's own loading moves it
    import torch

    from tasks.registry.model_ref import load_pyfunc, resolve
    from trainlib.device import pinned

    ref = resolve(f"models:/pred-waves-ensemble/{registered['version']}")
    local = Path(mlflow.artifacts.download_artifacts(ref.pinned))
    assert pinned(torch.export.load(str(next(local.glob("artifacts/*.pt2")))).graph) == []
    program = load_pyfunc(ref, torch.device("meta")).unwrap_python_model().program
    assert program(torch.zeros(3, *x.shape[1:], device="meta")).device.type == "meta"


def test_a_version_registered_before_its_signature_tags_is_read_from_its_model(table_model):
    from tasks.registry import signature

    name, version = table_model["registered_model"], table_model["version"]
    tagged = signature.of_version(name, version)
    assert tagged.words == "a table of 3 feature columns (x1, x2, x3), 3 classes (a, b, c)"
    MlflowClient().delete_model_version_tag(name, str(version), "input_key")  # as a version made before they were
    assert signature.of_version(name, version) == tagged  # from its model's own metadata
