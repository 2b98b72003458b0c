"""Batch scoring's library: readers of new data checked against what the model takes, the streaming scoring loop
and its output, drift against the training statistics."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trainlib.data.inputs import DatasetReader, FolderReader, NumpyReader, TableReader, _labels, kind_of
from trainlib.errors import ConfigError, DataError
from trainlib.scoring import Batch, Drift, InputSpec, PredictionWriter, input_spec, output_format, score

IMAGES = InputSpec(["0", "1", "2"], [1, 8, 8], True, [], 255.0, [100.0], [50.0])
TABLE = InputSpec(["a", "b"], [3], False, ["x1", "x2", "x3"], None, [0.0, 10.0, -5.0], [1.0, 2.0, 3.0])


def _png(path, value: int, size=(12, 10), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)


def test_a_flat_folder_is_unlabelled_keeps_paths_and_lists_the_corrupt_file(tmp_path):
    for i in range(5):
        _png(tmp_path / f"img{i}.png", 40 * i, mode="RGB")  # RGB and 12x10: converted and resized as trained
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "deep.png", 7)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("skipped: not an image file")
    reader = FolderReader(tmp_path, IMAGES)
    reader.check()
    batches = list(reader.batches(3))
    assert not reader.labelled and all(b.labels is None for b in batches)
    ids = [i for b in batches for i in b.ids]
    assert ids == [f"img{i}.png" for i in range(5)] + ["sub/deep.png"]  # sorted paths, broken.png skipped
    assert reader.errors == [("broken.png", reader.errors[0][1])] and "cannot read image" in reader.errors[0][1]
    x = np.concatenate([b.inputs for b in batches])
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.float32
    assert [float(v) for v in x[:, 0, 0, 0]] == [0, 40, 80, 120, 160, 7]  # raw 0..255, as the folder source


def test_class_folders_named_after_the_model_classes_are_labels(tmp_path):
    for c in ("0", "2"):
        for i in range(2):
            _png(tmp_path / c / f"{i}.png", 10)
    _png(tmp_path / "9" / "x.png", 10)  # 9 is not a class of the model: its folder is not a label
    assert not FolderReader(tmp_path, IMAGES).labelled
    (tmp_path / "9" / "x.png").unlink()
    (tmp_path / "9").rmdir()
    reader = FolderReader(tmp_path, IMAGES)
    labels = np.concatenate([b.labels for b in reader.batches(10)])
    assert reader.labelled and labels.tolist() == [0, 0, 2, 2]


def test_a_folder_for_a_table_model_or_an_empty_folder_is_one_error(tmp_path):
    _png(tmp_path / "a.png", 1)
    with pytest.raises(DataError, match="a folder of images, but the model takes a table of 3 feature columns"):
        FolderReader(tmp_path, TABLE).check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        FolderReader(tmp_path / "empty", IMAGES)


def test_a_table_is_read_by_column_name_whatever_its_order(tmp_path):
    frame = pd.DataFrame({"x3": [3.0, 30.0], "label": ["b", "zzz"], "x1": [1.0, 10.0], "x2": [2.0, 20.0],
                          "extra": [9, 9]})
    for name, write in (("t.csv", frame.to_csv), ("t.parquet", frame.to_parquet)):
        write(tmp_path / name, index=False)
        reader = TableReader(tmp_path / name, TABLE)
        reader.check()
        (batch,) = list(reader.batches(10))
        assert batch.inputs.tolist() == [[1, 2, 3], [10, 20, 30]], name  # the model's order: x1, x2, x3
        assert batch.ids == ["0", "1"] and batch.labels.tolist() == [1, -1]  # zzz is no class of the model
        assert len(reader) == 2


def test_a_missing_column_names_it_and_a_bad_row_is_listed(tmp_path):
    pd.DataFrame({"x1": [1.0], "x3": [3.0]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"missing feature column x2; the model takes x1, x2, x3"):
        TableReader(tmp_path / "m.csv", TABLE).check()
    pd.DataFrame({"x1": [1.0, None, 3.0], "x2": [1.0, 2.0, 3.0], "x3": [1.0, 2.0, np.inf]}).to_csv(
        tmp_path / "n.csv", index=False)
    reader = TableReader(tmp_path / "n.csv", TABLE)
    (batch,) = list(reader.batches(10))
    assert batch.ids == ["0"] and not reader.labelled and batch.labels is None
    assert reader.errors == [("1", "missing, infinite or not a number in x1"),
                             ("2", "missing, infinite or not a number in x3")]
    (tmp_path / "q.csv").write_text('x1,x2,x3,label\n1,2,3,1\n1,?,3,1\n4,5,6,\n"7",8,9,"x\ny"')
    spec = InputSpec(["1", "2"], [3], False, ["x1", "x2", "x3"], None, [0.0] * 3, [1.0] * 3)
    reader = TableReader(tmp_path / "q.csv", spec)
    (batch,) = list(reader.batches(10))  # one `?` is that row's problem, not the file's
    assert batch.ids == ["0", "2", "3"] and reader.errors == [("1", "missing, infinite or not a number in x2")]
    assert batch.labels.tolist() == [0, -1, -1]  # 1 is a class; a missing label and "x\ny" are not
    assert len(reader) == 4  # a quoted line break and no newline at the end: still 4 rows
    # pandas reads a column of whole numbers with a gap as floats: 3.0 is the class "3"
    assert _labels([3.0, 2, "1", None, float("nan"), "x"], ["1", "2", "3"]).tolist() == [2, 1, 0, -1, -1, -1]
    (tmp_path / "h.csv").write_text("x1,x2,x3\n")
    assert list(TableReader(tmp_path / "h.csv", TABLE).batches(10)) == [] and len(TableReader(tmp_path / "h.csv",
                                                                                            TABLE)) == 0
    pd.DataFrame({"x1": ["a"], "x2": [1.0], "x3": [1.0]}).to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(DataError, match="not numeric: x1"):
        list(TableReader(tmp_path / "w.csv", TABLE).batches(10))
    (tmp_path / "t.txt").write_text("x1,x2,x3")
    with pytest.raises(DataError, match="a folder of images, or a table ending in"):
        TableReader(tmp_path / "t.txt", TABLE)


def test_an_image_model_reads_a_table_of_pixels_in_column_order(tmp_path, digits):
    flat = digits.inputs[:5].reshape(5, -1).numpy()
    frame = pd.DataFrame(flat, columns=[f"p{i}" for i in range(64)]).assign(label=digits.labels[:5].numpy())
    frame.to_csv(tmp_path / "d.csv", index=False)
    spec = InputSpec([str(d) for d in range(10)], [1, 8, 8], True, [], 16.0, [4.9], [6.0])
    (batch,) = list(TableReader(tmp_path / "d.csv", spec).batches(10))
    assert np.array_equal(batch.inputs, digits.inputs[:5].numpy().astype(np.float32))
    assert batch.labels.tolist() == digits.labels[:5].tolist()
    frame.drop(columns=["p3"]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="63 feature columns, but the model takes grayscale images of 8x8 pixels: 64"):
        TableReader(tmp_path / "short.csv", spec).check()
    wrong = InputSpec(spec.classes, [3, 8, 8], True, [], 255.0, [0.0] * 3, [1.0] * 3)
    with pytest.raises(DataError, match=r"samples of shape \(1, 8, 8\), but the model takes RGB images"):
        DatasetReader(digits, wrong, "digits").check()


SIGNALS = InputSpec(["sine", "square"], [1, 6], False, [], None, [0.0], [1.0])


def test_numpy_files_of_signals_are_read_in_order_with_their_labels_and_bad_rows_listed(tmp_path):
    x = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)  # (N, L): one channel
    x[3, 2] = np.nan
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["square", "sine", "noise", "sine", "square"]))
    reader = NumpyReader(tmp_path / "s.npz", SIGNALS)
    reader.check()
    batches = list(reader.batches(2))
    assert [b.ids for b in batches] == [["0", "1"], ["2"], ["4"]] and reader.errors == [("3", "NaN or infinite values")]
    assert np.array_equal(np.concatenate([b.inputs for b in batches]), x[[0, 1, 2, 4], None, :].astype(np.float32))
    assert batches[0].inputs.dtype == np.float32 and batches[0].labels.tolist() == [1, 0]
    assert batches[1].labels.tolist() == [-1]  # "noise" is not one of the model's classes
    np.save(tmp_path / "s.npy", x[:, None, :][[0, 1]])  # (N, C, L), no labels: read through a memory map
    npy = NumpyReader(tmp_path / "s.npy", SIGNALS)
    npy.check()
    assert not npy.labelled and isinstance(npy.x, np.memmap) and len(npy) == 2
    assert [kind_of(tmp_path / n) for n in ("s.npz", "s.npy", "t.csv", ".")] == ["numpy", "numpy", "table", "folder"]


def test_numpy_files_that_do_not_fit_the_model_are_one_error(tmp_path):
    np.savez(tmp_path / "long.npz", x=np.zeros((3, 7)))
    with pytest.raises(DataError, match=r"samples of shape \(1, 7\), but the model takes signals of 1 channel x 6 "):
        NumpyReader(tmp_path / "long.npz", SIGNALS).check()
    np.savez(tmp_path / "sig.npz", x=np.zeros((3, 1, 6)))
    with pytest.raises(DataError, match=r"samples of shape \(1, 6\), but the model takes grayscale images of 8x8"):
        NumpyReader(tmp_path / "sig.npz", IMAGES).check()
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 6)), b=np.zeros((3, 6)))
    with pytest.raises(DataError, match="which array holds the signals"):
        NumpyReader(tmp_path / "two.npz", SIGNALS)
    with pytest.raises(DataError, match="no such file or folder"):
        NumpyReader(tmp_path / "missing.npz", SIGNALS)


def test_scoring_writes_every_row_with_its_probabilities_and_counts_the_labelled(tmp_path, digits):
    spec = input_spec(digits, type("M", (), {"mean": [4.88], "std": [6.02]})())
    assert InputSpec.from_dict(spec.to_dict()) == spec
    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)

    def predict(x):  # a fixed linear scorer stands in for the network: the loop is under test
        return x.reshape(len(x), -1) @ weights

    for out in ("p.parquet", "p.csv"):
        reader = DatasetReader(digits, spec, "digits")
        writer = PredictionWriter(tmp_path / out, spec.classes, labelled=True)
        result = score(predict, reader.batches(256), spec, writer, reader.errors, 0.5)
        table = pd.read_parquet(tmp_path / out) if out.endswith("parquet") else pd.read_csv(tmp_path / out)
        expected = predict(digits.inputs.numpy().astype(np.float32)).argmax(1)
        assert len(table) == result.rows == len(digits)
        assert table["id"].astype(str).tolist() == [str(i) for i in range(len(digits))]
        assert table["predicted"].astype(str).tolist() == [spec.classes[i] for i in expected]
        probs = table[[f"p_{c}" for c in spec.classes]].to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-5) and np.allclose(probs.max(1), table["probability"])
        truth = digits.labels.numpy()
        assert result.confusion.sum() == len(digits) and np.trace(result.confusion) == (expected == truth).sum()
        assert result.metrics["accuracy"] == pytest.approx((expected == truth).mean())


def test_drift_is_small_on_the_training_data_and_flags_a_rescaled_copy(digits):
    x = digits.inputs.numpy().astype(np.float32)
    spec = InputSpec([], [1, 8, 8], True, [], 16.0, [float(x.mean())], [float(x.std())])
    same, scaled, squeezed = Drift(spec), Drift(spec), Drift(spec)
    for chunk in np.array_split(x, 7):  # a batch at a time, as scoring feeds it
        same.update(chunk)
        scaled.update(chunk * 255 / 16)  # the same digits at an image file's 0..255
        squeezed.update(chunk * 0.4 + float(x.mean()) * 0.6)  # same mean, 0.4x the spread
    assert same.report(0.5).score < 1e-5 and not same.report(0.5).drifted
    assert scaled.report(0.5).drifted and scaled.report(0.5).shift[0] > 5
    report = squeezed.report(0.5)
    assert report.shift[0] < 1e-4 and report.spread[0] == pytest.approx(np.log(0.4), rel=1e-4) and report.drifted
    assert "spread x0.40" in report.worst()
    constant = InputSpec([], [2], False, ["k", "v"], None, [3.0, 0.0], [0.0, 1.0])
    d = Drift(constant)
    d.update(np.array([[3.0, 0.5], [3.0, -0.5]], dtype=np.float32))
    assert d.report(0.5).spread[0] == 0.0  # a constant feature that stays constant has not drifted


def test_the_output_format_is_chosen_by_extension():
    assert output_format("a.PARQUET") == ".parquet" and output_format("b.csv") == ".csv"
    with pytest.raises(ConfigError, match="give a .parquet or .csv file"):
        output_format("c.json")


def test_batches_whose_labels_are_all_unknown_keep_the_parquet_schema(tmp_path):
    writer = PredictionWriter(tmp_path / "p.parquet", ["a", "b"], labelled=True)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    writer.write(["0", "1"], probs, np.array([-1, -1]))  # labels none of the model's classes
    writer.write(["2", "3"], probs, np.array([0, 1]))
    writer.close()
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert table["label"].isna().tolist() == [True, True, False, False] and table["label"].tolist()[2:] == ["a", "b"]
    assert table["predicted"].tolist() == ["a", "b", "a", "b"]
    empty = PredictionWriter(tmp_path / "e.parquet", ["a", "b"], labelled=False)
    empty.close()  # nothing scored: the file still has the columns
    assert list(pd.read_parquet(tmp_path / "e.parquet").columns) == ["id", "predicted", "probability", "p_a", "p_b"]


def test_macro_f1_counts_only_the_classes_the_data_has():
    spec = InputSpec(["a", "b", "c"], [1], False, ["x"], None, [0.0], [1.0])
    reader_rows = [Batch(["0", "1", "2"], np.array([[0.0], [0.0], [0.0]], np.float32), np.array([0, 0, -1]))]
    writer = PredictionWriter("unused.csv", spec.classes, labelled=True)
    writer.write = lambda *a: setattr(writer, "rows", writer.rows + len(a[0]))  # the metrics are under test
    writer.close = lambda: None
    result = score(lambda x: np.tile([5.0, 0.0, 0.0], (len(x), 1)), iter(reader_rows), spec, writer, [], 0.5)
    assert result.metrics["accuracy"] == 1.0 and result.metrics["f1"] == 1.0  # b and c absent: not F1 0
    assert result.metrics["unknown_labels"] == 1  # the row labelled with no class of the model
