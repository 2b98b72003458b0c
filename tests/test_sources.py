"""Ingest: every source yields inputs, integer labels, class names and a content digest."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tabular_frame, write_fake_mnist, write_images
from PIL import Image

from trainlib.data import sources
from trainlib.data.sources import SOURCES, load_dataset, save_dataset
from trainlib.errors import DataError, Unreadable


def _options(source, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if source == "digits":
        return {}
    if source == "imagefolder":
        return {"path": write_images(tmp_path / "img"), "image_size": (16, 12), "channels": 3}
    if source == "csv":
        tabular_frame().to_csv(tmp_path / "t.csv", index=False)
        return {"path": tmp_path / "t.csv", "target": "label"}
    if source == "parquet":
        tabular_frame().to_parquet(tmp_path / "t.parquet")
        return {"path": tmp_path / "t.parquet", "target": "label"}
    if source == "torchvision":
        return {"path": write_fake_mnist(tmp_path / "tv"), "dataset": "MNIST"}
    if source == "numpy":
        np.savez(tmp_path / "s.npz", x=np.random.default_rng(0).normal(size=(30, 2, 16)), y=np.arange(30) % 3)
        return {"path": tmp_path / "s.npz"}
    if source == "waveforms":
        return {}
    raise AssertionError(f"no fixture for source {source}")


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_source_yields_the_same_kind_of_dataset(source, tmp_path):
    ds = sources.load(source, **_options(source, tmp_path))
    assert len(ds.inputs) == len(ds.labels) > 0
    assert ds.labels.dtype == torch.int64
    assert set(ds.labels.tolist()) <= set(range(len(ds.classes))) and len(ds.classes) >= 2
    assert len(ds.digest) == 64 and ds.digest == sources.load(source, **_options(source, tmp_path / "again")).digest
    assert ds.dims == SOURCES[source].dims and ds.is_image == (ds.dims == 3)


def test_digits_is_the_embedded_default(digits):
    assert digits.inputs.shape == (1797, 1, 8, 8) and digits.value_max == 16
    assert digits.inputs.max() == 16 and digits.classes == [str(d) for d in range(10)]


def test_imagefolder_converts_and_resizes_any_size_and_mode(image_root):
    gray = sources.load("imagefolder", path=image_root, image_size=(20, 24), channels=1)
    rgb = sources.load("imagefolder", path=image_root, image_size=(20, 24), channels=3)
    assert gray.inputs.shape == (18, 1, 20, 24) and rgb.inputs.shape == (18, 3, 20, 24)
    assert gray.inputs.dtype == torch.uint8 and gray.classes == ["cat", "dog", "owl"]
    assert gray.digest != rgb.digest


def test_imagefolder_stream_decodes_the_same_pixels(image_root):
    memory = sources.load("imagefolder", path=image_root, image_size=(16, 16))
    streamed = sources.load("imagefolder", path=image_root, image_size=(16, 16), stream=True)
    assert streamed.streamed and streamed.sample_shape == (3, 16, 16)
    for i in (0, 7, 17):
        x, y = streamed.inputs[i]
        assert torch.equal(x, memory.inputs[i]) and y == memory.labels[i]


def test_digest_follows_the_content(tmp_path):
    frame = tabular_frame()
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.assign(x2=frame.x2 + 1).to_csv(tmp_path / "b.csv", index=False)
    assert sources.load("csv", path=tmp_path / "a.csv").digest != sources.load("csv", path=tmp_path / "b.csv").digest


def test_tabular_columns_and_classes(csv_file):
    ds = sources.load("csv", path=csv_file, target="label", features=["x1", "x3"])
    assert ds.inputs.shape == (120, 2) and ds.inputs.dtype == torch.float32
    assert ds.feature_names == ["x1", "x3"] and ds.classes == ["a", "b", "c"] and not ds.is_image


def test_torchvision_pools_train_and_test(tmp_path):
    ds = sources.load("torchvision", path=write_fake_mnist(tmp_path, "FashionMNIST"), dataset="FashionMNIST")
    assert ds.inputs.shape == (60, 1, 28, 28) and ds.value_max == 255 and len(ds.classes) == 10


def test_torchvision_missing_files_say_how_to_provide_them(tmp_path):
    with pytest.raises(DataError, match="CIFAR10 not found under .*data.download: true"):
        sources.load("torchvision", path=tmp_path, dataset="CIFAR10")


def test_dataset_file_round_trip(digits, image_root, tmp_path):
    save_dataset(digits, tmp_path / "d.pt")
    back = load_dataset(tmp_path / "d.pt")
    assert torch.equal(back.inputs, digits.inputs) and back.digest == digits.digest and back.value_max == 16
    streamed = sources.load("imagefolder", path=image_root, stream=True)
    save_dataset(streamed, tmp_path / "s.pt")
    assert load_dataset(tmp_path / "s.pt").inputs.paths == streamed.inputs.paths


@pytest.mark.parametrize("make, expected", [
    (lambda p: p, "no such directory"),
    (lambda p: (p.mkdir(), p)[1], "Couldn't find any class folder"),
    (lambda p: (write_images(p), (p / "empty").mkdir(), p)[2], "no valid file for the classes empty"),
])
def test_imagefolder_bad_folders(tmp_path, make, expected):
    root = make(tmp_path / "root")
    with pytest.raises(DataError, match=expected):
        sources.load("imagefolder", path=root)


def test_corrupt_and_truncated_images_are_named_together(image_root):
    (image_root / "cat" / "bad.png").write_bytes(b"not an image at all")
    good = (image_root / "dog" / "0.png").read_bytes()
    (image_root / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(Unreadable) as caught:
        sources.load("imagefolder", path=image_root)
    assert caught.value.problems == [("cat/bad.png", "cannot identify image file"),
                                     ("dog/cut.png", "image file is truncated")]


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.drop(columns="label"), "no class column: none named label, nor a lone target or class column; set "
                                        "data.target to one of the columns: x1, x2, x3"),
    (lambda f: f.assign(x2="text"), "feature columns must be numeric; x2 holds no number \\(e.g. 'text'\\); leave "
                                    "them out with data.features"),
    (lambda f: f.assign(x1=np.where(np.arange(len(f)) == 3, np.nan, f.x1)), "1 row cannot be used .*\n  - data row "
                                                                             "4, column x1: missing"),
    (lambda f: f.assign(label="a"), "single class"),
    (lambda f: f.iloc[:0], "empty"),
])
def test_bad_tables(tmp_path, change, expected):
    change(tabular_frame()).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=expected):
        sources.load("csv", path=tmp_path / "t.csv")


def test_missing_table_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        sources.load("parquet", path=tmp_path / "none.parquet")


# ---------------------------------------------------------------- the source's identity before ingest (the cache key)


def _rewrite_keeping_size_and_mtime(path, content: bytes) -> None:
    """New content of the same size, with the modification time put back: what a stat-based check cannot see."""
    before = path.stat()
    assert len(content) == before.st_size and content != path.read_bytes()
    path.write_bytes(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _bmp(path, seed: int) -> None:
    """An uncompressed image: any pixels give the same file size."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)


def _same_size_edit(source: str, tmp_path):
    """-> (data config options, how to change one file's content keeping its size and mtime)."""
    if source == "imagefolder":
        root = write_images(tmp_path / "img")
        _bmp(root / "cat" / "edited.bmp", seed=1)

        def edit():
            out = tmp_path / "other.bmp"
            _bmp(out, seed=2)
            _rewrite_keeping_size_and_mtime(root / "cat" / "edited.bmp", out.read_bytes())

        return {"path": str(root), "image_size": (12, 10)}, edit
    file = tmp_path / "t.csv"
    tabular_frame().to_csv(file, index=False)
    text = file.read_text()
    return {"path": str(file)}, lambda: _rewrite_keeping_size_and_mtime(file, text.replace(",a\n", ",b\n", 1).encode())


_OPENED: list[str] = []  # files opened while a test below watches (an audit hook lives as long as the process)


def _note_opens(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], str):
        _OPENED.append(args[0])


def test_a_run_reads_each_image_once_to_hash_and_once_to_decode(tmp_path):
    """The pre-flight's and the flow's ingest keys (both hash the folder's files) and the ingest itself (whose decoded
    cache is kept by each file's content) share one read of each file while the files are unchanged."""
    import sys

    from tasks.chain.stages import ingest_key
    from trainlib import recipe
    from trainlib.config import DataConfig

    root = write_images(tmp_path / "img")
    data = DataConfig(source="imagefolder", path=str(root), image_size=(8, 8), workers=0)
    sys.addaudithook(_note_opens)
    _OPENED[:] = ["(watching)"]
    try:
        keys = {ingest_key(data), ingest_key(data)}  # the pre-flight's, then the flow's cache key
        recipe.ingest(data, cache_dir=tmp_path / "decoded")  # a miss: decodes every file into the cache
    finally:
        opened, _OPENED[:] = _OPENED[1:], []
    images = sorted(str(p) for p in root.rglob("*.png"))
    assert len(keys) == 1 and len(images) == 18
    assert sorted(p for p in opened if p.endswith(".png")) == sorted(images * 2)  # hashed once, decoded once


@pytest.mark.parametrize("source", ["csv", "imagefolder"])
def test_new_content_of_the_same_size_and_mtime_changes_the_fingerprint_and_the_ingest_key(source, tmp_path):
    from tasks.chain.ingest import ingest_key
    from trainlib.config import DataConfig

    options, edit = _same_size_edit(source, tmp_path)
    data = DataConfig(source=source, **options)
    fingerprint, key = sources.fingerprint(source, data.path), ingest_key(data)
    digest = sources.load(source, **options).digest
    assert sources.fingerprint(source, data.path) == fingerprint and ingest_key(data) == key  # stable when unchanged
    edit()
    assert sources.load(source, **options).digest != digest  # the data really changed
    assert sources.fingerprint(source, data.path) != fingerprint
    assert ingest_key(data) != key  # so the cached ingest is not reused


def test_a_streamed_image_folder_digest_follows_the_content(tmp_path):
    """Split and normalize are cached on the dataset digest: a streamed dataset's must change with its pixels."""
    options, edit = _same_size_edit("imagefolder", tmp_path)
    before = sources.load("imagefolder", **options, stream=True)
    edit()
    after = sources.load("imagefolder", **options, stream=True)
    assert after.digest != before.digest


def test_a_copied_folder_keeps_its_fingerprint(image_root, tmp_path):
    copy = shutil.copytree(image_root, tmp_path / "copy", copy_function=shutil.copyfile)  # new modification times
    assert (copy / "cat" / "0.png").stat().st_mtime_ns != (image_root / "cat" / "0.png").stat().st_mtime_ns
    assert sources.fingerprint("imagefolder", copy) == sources.fingerprint("imagefolder", image_root)
    (copy / "cat" / "0.png").rename(copy / "cat" / "renamed.png")
    assert sources.fingerprint("imagefolder", copy) != sources.fingerprint("imagefolder", image_root)


_PER_FILE = """
import sys, tracemalloc, torch
from trainlib import recipe
from trainlib.config import SplitConfig
from trainlib.data import sources
from trainlib.data.batches import subset
from trainlib.data.split import indices
tracemalloc.start()
root, file = sys.argv[1], sys.argv[2]
sources.fingerprint("imagefolder", root)
ds = sources.load("imagefolder", path=root, image_size=(4, 4), channels=1, stream=True)
sources.save_dataset(ds, file)
del ds
ds = sources.load_dataset(file)
train = subset(ds, indices(recipe.split(ds, SplitConfig()), "train"), workers=0)
next(train.batches(64, torch.Generator().manual_seed(0)))  # the epoch's order, one batch decoded
print(tracemalloc.get_traced_memory()[1])
"""


def _tiny_tree(root, n: int):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, "PNG")
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):
        (root / f"class{i % 4}" / f"image-{i:06d}.png").write_bytes(buf.getvalue())
    return root


def test_a_streamed_folder_holds_at_most_200_bytes_per_file(tmp_path):
    """Streaming exists to keep memory flat: from 10,000 to 30,000 files, the streamed path (fingerprint, ingest, the
    dataset file written and read back, split, an epoch's order) may grow the Python heap's peak by at most 200
    bytes per file (lists of paths, tuples and Path objects took 806). Below about 10,000 files the peak is a
    constant's (about 5 MiB), not the files': from 2,000 files the slope read 61 bytes before ingest kept each
    file's digest (32 bytes) and 292 after, against 109 and 125 from 10,000 to 40,000."""
    import subprocess
    import sys

    peaks, sizes = {}, (10000, 30000)
    for n in sizes:
        root = _tiny_tree(tmp_path / str(n), n)
        out = subprocess.run([sys.executable, "-c", _PER_FILE, str(root), str(tmp_path / f"{n}.pt")],
                             capture_output=True, text=True, check=True)
        peaks[n] = int(out.stdout.split()[-1])
    per_file = (peaks[sizes[1]] - peaks[sizes[0]]) / (sizes[1] - sizes[0])
    assert per_file < 200, f"{per_file:.0f} bytes per file"


def test_a_folder_too_big_for_memory_is_refused_before_decoding(image_root, monkeypatch):
    from trainlib.data import folders

    decoded = []
    monkeypatch.setattr(folders, "decode_image", lambda *a: decoded.append(a))
    with pytest.raises(DataError) as caught:
        sources.load("imagefolder", path=image_root, image_size=(200, 300), channels=3, memory_budget=0.001)
    # 18 images of 3x200x300 are 3.1 MiB decoded; twice that is over a budget of 0.001 GiB (1 MiB)
    assert str(caught.value) == (
        "data: 18 images of 3x200x300 decoded in memory need about 6.2 MiB (twice their 3.1 MiB, a margin for the "
        "copies made while reading them), over the memory budget of 1.0 MiB (data.memory_budget); set data.stream: "
        "true to decode them per batch instead")
    assert decoded == []
    monkeypatch.undo()
    streamed = sources.load("imagefolder", path=image_root, image_size=(200, 300), channels=3, memory_budget=0.001,
                            stream=True)
    assert len(streamed) == 18
    assert len(sources.load("imagefolder", path=image_root, image_size=(200, 300), memory_budget=0.01)) == 18


def test_decoded_images_are_cached_by_content_and_decoded_again_only_for_a_changed_file(tmp_path):
    from trainlib.data import decoded, folders

    options, edit = _same_size_edit("imagefolder", tmp_path)
    root, cache = options["path"], tmp_path / "cache"

    def pack():
        files = folders.ImageFiles(root, *folders.list_images(Path(root))[1:], (12, 10), 3)
        return files, decoded.build(files, folders.image_digests(files.root, files.names)[1], cache, workers=0)

    files, first = pack()
    assert (first.reused, first.decoded) == (0, 19)
    direct, failed = folders.decode_all(files, workers=0)
    assert failed == []
    assert torch.equal(decoded.load(first.path, (12, 10), 3, 19), direct)
    assert pack()[1] == decoded.Built(first.path, 19, 0, [])  # the same files again: the same pack, nothing decoded
    edit()  # one file's pixels change, its size and modification time do not
    files, second = pack()
    assert (second.reused, second.decoded) == (18, 1) and second.path != first.path
    edited = [i for i in range(len(files)) if files.path(i).endswith("edited.bmp")][0]
    now = decoded.load(second.path, (12, 10), 3, 19)
    assert torch.equal(now[edited], torch.from_numpy(folders.decode_image(files.path(edited), (12, 10), 3)))
    assert not torch.equal(now[edited], direct[edited])
    keep = [i for i in range(19) if i != edited]
    assert torch.equal(now[keep], direct[keep])
    (Path(root) / "cat" / "0.png").rename(Path(root) / "cat" / "renamed.png")  # new name, same content: reused
    assert pack()[1].decoded == 0


def test_streamed_batches_from_the_cache_are_the_in_memory_batches(image_root, tmp_path):
    from trainlib.data.batches import StreamData, TensorData
    from trainlib.data.decoded import PackedImages

    memory = sources.load("imagefolder", path=image_root, image_size=(9, 7), channels=3)
    streamed = sources.load("imagefolder", path=image_root, image_size=(9, 7), channels=3, stream=True,
                            cache_dir=tmp_path / "cache")
    assert isinstance(streamed.inputs, PackedImages)
    cached = sources.load("imagefolder", path=image_root, image_size=(9, 7), channels=3, cache_dir=tmp_path / "cache")
    assert torch.equal(cached.inputs, memory.inputs) and cached.digest == memory.digest
    rows = np.array([3, 17, 0, 5, 11, 8, 2])
    a = TensorData(memory.inputs[torch.from_numpy(rows)], memory.labels[torch.from_numpy(rows)])
    b = StreamData(streamed.inputs, rows)
    for (xa, ya), (xb, yb) in zip(a.batches(3, torch.Generator().manual_seed(4)),
                                  b.batches(3, torch.Generator().manual_seed(4)), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    save_dataset(streamed, tmp_path / "s.pt")
    back = load_dataset(tmp_path / "s.pt")
    assert isinstance(back.inputs, PackedImages) and torch.equal(back.inputs.batch(rows)[0], a.inputs)


def test_an_in_memory_split_gathers_the_dataset_rows_without_copying_the_dataset():
    from trainlib.data.batches import TensorData, subset

    ds = sources.load("digits")
    rows = np.array([5, 1700, 3, 42, 42, 999, 0])  # any rows, repeated ones too (a bootstrap resample)
    split = subset(ds, rows)
    assert split.base.data_ptr() == ds.inputs.data_ptr()  # the dataset itself, not a copy of its rows
    copied = TensorData(ds.inputs[torch.from_numpy(rows)], ds.labels[torch.from_numpy(rows)])
    assert torch.equal(split.inputs, copied.inputs) and split.sample_shape == (1, 8, 8)
    for shuffle in (None, 7):
        a = split.batches(3, None if shuffle is None else torch.Generator().manual_seed(shuffle))
        b = copied.batches(3, None if shuffle is None else torch.Generator().manual_seed(shuffle))
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
