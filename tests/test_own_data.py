"""A user's own data, right the first time (trainlib): what a config leaves unset follows the data (the name, the
model, a table's class column), and every unusable row or file is found in one pass, named together, or left out
with data.skip_unreadable, an image decoded once whatever happens."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tabular_frame, write_images
from PIL import Image

from flows.plans import title
from trainlib.config import load_config
from trainlib.data import folders, sources
from trainlib.errors import DataError, Unreadable


def _table(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_the_name_model_and_class_column_follow_the_data(tmp_path):
    wine = _table(tmp_path / "wine.csv", tabular_frame().rename(columns={"label": "target"}))
    plain = load_config()
    assert (plain.name, plain.model.name, plain.data.target) == ("digits-cnn", "cnn", "label")  # the quickstart's
    table = load_config(None, ["data.source=csv", f"data.path={wine}"])
    assert (table.name, table.model.name, table.data.target) == ("wine-mlp", "mlp", "target")
    assert title(table) == "wine-mlp: mlp, adam at lr 0.001, schedule none, on csv wine.csv (target column 'target')"
    assert len(sources.load("csv", path=wine)) == 120  # the library finds it too, without a config
    classes = _table(tmp_path / "Leaf shapes (v2).csv", tabular_frame().rename(columns={"label": "class"}))
    named = load_config(None, ["data.source=csv", f"data.path={classes}", "model.name=cnn1d"])
    assert (named.name, named.data.target) == ("Leaf-shapes-v2-cnn1d", "class")
    assert load_config(None, ["data.source=waveforms"]).name == "waveforms-cnn1d"
    assert load_config(None, ["data.source=imagefolder", f"data.path={tmp_path}/pics/"]).name == "pics-cnn"
    assert load_config(None, ["data.source=csv", f"data.path={wine}", "name=mine"]).name == "mine"
    kept = load_config(None, ["data.source=csv", f"data.path={wine}", "data.target=x1"])
    assert kept.data.target == "x1"  # given: used as given


def test_a_table_with_no_class_column_or_two_candidates_says_so(tmp_path):
    both = _table(tmp_path / "both.csv", tabular_frame().assign(target=0, **{"class": 1}).drop(columns="label"))
    assert load_config(None, ["data.source=csv", f"data.path={both}"]).data.target is None  # ingest says why
    with pytest.raises(DataError, match="no class column: none named label, nor a lone target or class column; set "
                                        "data.target to one of the columns: x1, x2, x3, target, class$"):
        sources.load("csv", path=both)


def test_every_bad_cell_is_named_by_row_column_and_value_or_its_row_skipped(tmp_path):
    frame = tabular_frame().astype({"x2": object})
    frame.loc[16, "x2"], frame.loc[40, "x1"], frame.loc[41, "label"] = "n/a?", np.nan, None
    path = _table(tmp_path / "t.csv", frame)
    with pytest.raises(Unreadable) as caught:
        sources.load("csv", path=path)
    assert caught.value.problems == [("data row 17, column x2", "'n/a?' is not a number"),
                                     ("data row 41, column x1", "missing"),
                                     ("data row 42, column label", "no class (missing)")]
    skipped = sources.load("csv", path=path, skip_unreadable=True)
    assert (len(skipped), skipped.skipped, skipped.classes) == (117, 3, ["a", "b", "c"])
    good = frame.drop(index=[16, 40, 41])
    assert np.allclose(skipped.inputs.numpy(), good[["x1", "x2", "x3"]].astype(float).to_numpy())
    assert [skipped.classes[i] for i in skipped.labels] == good["label"].tolist()
    sources.save_dataset(skipped, tmp_path / "d.pt")
    assert sources.load_dataset(tmp_path / "d.pt").skipped == 3


def test_many_problems_are_counted_past_the_first_ten():
    many = Unreadable("csv t.csv", [(f"data row {i}, column x", "missing") for i in range(1, 26)])
    lines = many.describe(listed_in="t.csv.errors.csv").splitlines()
    assert lines[0] == ("csv t.csv: 25 rows cannot be used (fix them, or set data.skip_unreadable: true to train "
                        "without them):")
    assert lines[1:] == [f"  - data row {i}, column x: missing" for i in range(1, 11)] + [
        "  ... and 15 more (every one in t.csv.errors.csv)"]


def test_unreadable_images_are_named_together_decoded_once_and_skippable(tmp_path, monkeypatch):
    root, cache = write_images(tmp_path / "pics", per_class=6), tmp_path / "cache"
    (root / "cat" / "bad.png").write_bytes(b"not an image")
    (root / "owl" / "cut.png").write_bytes((root / "owl" / "0.png").read_bytes()[:60])
    options = {"path": root, "image_size": (8, 8), "workers": 0, "cache_dir": cache}
    with pytest.raises(Unreadable) as caught:
        sources.load("imagefolder", **options)
    assert [where for where, _ in caught.value.problems] == ["cat/bad.png", "owl/cut.png"]
    decoded = []
    real = folders._decode
    monkeypatch.setattr(folders, "_decode", lambda *a: decoded.append(a[0]) or real(*a))
    for stream in (False, True):  # the files were decoded into the cache once, the unreadable ones recorded there
        ds = sources.load("imagefolder", **options, stream=stream, skip_unreadable=True)
        assert (len(ds), ds.skipped, decoded) == (18, 2, [])
        assert len(ds.inputs) == len(ds.labels) == 18
    (root / "cat" / "bad.png").unlink()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(root / "owl" / "cut.png")  # mended: decoded now, alone
    ds = sources.load("imagefolder", **options)
    assert (len(ds), ds.skipped, [Path(p).name for p in decoded]) == (19, 0, ["cut.png"])


def test_streamed_images_without_the_cache_are_all_tried_before_training(tmp_path):
    root = write_images(tmp_path / "pics", per_class=6)
    (root / "dog" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(Unreadable, match="dog/bad.png: cannot identify image file"):
        sources.load("imagefolder", path=root, image_size=(8, 8), workers=0, stream=True, cache=False)
    ds = sources.load("imagefolder", path=root, image_size=(8, 8), workers=0, stream=True, cache=False,
                      skip_unreadable=True)
    assert (len(ds), ds.skipped) == (18, 1)
    assert len(ds.inputs.take(np.arange(18))) == 18 and all(b"bad" not in n for n in ds.inputs.names)
