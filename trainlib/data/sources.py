"""Ingest: every source yields a `Dataset` (inputs, integer labels, class names, content digest).

Inputs stay in the source's own units (digits 0..16, image pixels 0..255 as uint8, tabular and signal floats);
normalization lives inside the model, so an exported model takes raw inputs. A sample is (C, H, W) for images,
(C, L) for signals, (F,) for a table.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trainlib.checkpoint import atomic_path
from trainlib.data import decoded, folders, signals, tables
from trainlib.data.decoded import PackedImages
from trainlib.data.folders import ImageFiles
from trainlib.data.tables import TARGETS
from trainlib.errors import ConfigError, DataError, Unreadable
from trainlib.registry import Registry

TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")
STREAMED = (ImageFiles, PackedImages)  # images read per batch; both take(rows), relabelled(labels), state()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """What every source yields. `inputs` is (N, C, H, W) for images, (N, C, L) for signals, (N, F) for tabular
    data, or, for streamed ImageFolder data, `PackedImages` (rows of the decoded-image cache) or `ImageFiles`
    (files, with data.cache off)."""

    inputs: torch.Tensor | ImageFiles | PackedImages
    labels: torch.Tensor  # (N,) int64 class indices
    classes: list[str]
    digest: str  # sha256 of the content (streamed data: of the files' names, sizes and contents)
    value_max: float | None = None  # largest raw value of an image pixel; None for tabular data
    feature_names: list[str] = field(default_factory=list)  # table columns, in input order (of signals read from one:
    # channel 0's time steps, then channel 1's, ...)
    skipped: int = 0  # unreadable rows or files left out (data.skip_unreadable)

    @property
    def is_image(self) -> bool:
        return self.value_max is not None

    @property
    def streamed(self) -> bool:
        return isinstance(self.inputs, STREAMED)

    @property
    def dims(self) -> int:
        """A sample's dimensions: 3 images, 2 signals, 1 a table."""
        return len(self.sample_shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self.streamed:
            return (self.inputs.channels, *self.inputs.size)
        return tuple(self.inputs.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)


def content_digest(*parts: object) -> str:
    """sha256 over tensors/arrays (their bytes and shape) and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.contiguous().numpy()
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).reshape(-1).view(np.uint8))  # the bytes, not a copy of them
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()


def _finish(inputs, labels, classes, value_max=None, feature_names=(), digest=None, skipped=0) -> Dataset:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(labels) == 0:
        raise DataError("the dataset is empty: no samples were found")
    present = torch.unique(labels)
    if len(present) < 2:
        only = classes[int(present[0])] if len(classes) else "?"
        raise DataError(f"the dataset has a single class ({only!r}): classification needs at least two")
    if digest is None:
        digest = content_digest(inputs, labels, list(classes))
    return Dataset(inputs, labels, list(classes), digest, value_max, list(feature_names), skipped)


def load_digits(**_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, pixel values 0..16): the embedded default."""
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    inputs = torch.from_numpy(x.astype(np.uint8).reshape(-1, 1, 8, 8))
    return _finish(inputs, y, [str(d) for d in range(10)], value_max=16.0)


def load_imagefolder(path, image_size=(32, 32), channels=None, stream=False, workers=2, memory_budget=None, cache=True,
                     cache_dir=None, skip_unreadable=False, **_) -> Dataset:
    """Class-per-folder images of any size and mode, converted to `channels` and resized to `image_size` by
    `workers` processes. With `stream`, the images are read per batch instead of held in memory; without, only
    when the estimate of the memory they need is within `memory_budget` (GiB). With `cache` and a `cache_dir`,
    the decoded images are kept there by content (trainlib.data.decoded): a file is decoded once, and streamed
    batches read decoded rows; without, streamed batches decode their files. Every file is tried: the unreadable
    ones are named together (Unreadable), or with `skip_unreadable` left out."""
    root, channels = Path(path), channels or 3
    classes, names, labels = folders.list_images(root)
    files = ImageFiles(str(root), names, labels, tuple(image_size), channels)
    if not stream:
        folders.check_fits(files, memory_budget)
    identity, pack, unreadable = None, None, []  # no pack: decoded below (streamed: per batch, after a first try)
    if cache and cache_dir is not None:
        identity, digests = folders.image_digests(files.root, files.names)
        try:
            built = decoded.build(files, digests, Path(cache_dir), workers)
            pack, unreadable = built.path, built.unreadable
        except OSError as exc:
            log.warning("data.cache: decoding without the cache (%s)", exc)
    if stream:
        if identity is None:
            identity = folders.image_digests(files.root, files.names)[0]
        digest = content_digest(identity, labels, classes, list(files.size), channels)
        inputs = files if pack is None else PackedImages(str(pack), labels, files.size, channels)
        if pack is None:  # every file tried here once: an unreadable one is named now, not in the middle of training
            unreadable = [failed for _, bad in folders.decode_blocks(files, workers) for failed in bad]
    elif pack is None:
        (inputs, unreadable), digest = folders.decode_all(files, workers), None
    else:
        inputs, digest = decoded.load(pack, files.size, channels, len(files)), None
    rows = _usable(f"imagefolder {root}", [(i, names[i].decode(), why) for i, why in unreadable], "files",
                   skip_unreadable, len(files))
    if rows is not None:
        labels, digest = labels[rows], digest and content_digest(digest, "usable", rows)
        inputs = inputs.take(rows, labels) if stream else inputs[torch.from_numpy(rows)]
    return _finish(inputs, labels, classes, 255.0, digest=digest, skipped=len(unreadable) if rows is not None else 0)


def _usable(what: str, problems: list[tuple[int, str, str]], unit: str, skip: bool, n: int) -> np.ndarray | None:
    """Of `n` rows with these `problems` (index, where, why): None when there are none; with `skip`, the indices of
    the usable rows (the skipped ones said in the log); else Unreadable, naming every problem."""
    if not problems:
        return None
    if not skip:
        raise Unreadable(what, [(where, why) for _, where, why in problems], unit)
    bad = np.unique([i for i, _, _ in problems])
    log.warning("%s: %d %s skipped (data.skip_unreadable), the first: %s", what, len(bad), unit,
                "; ".join(f"{where}: {why}" for _, where, why in problems[:3]))
    return np.setdiff1d(np.arange(n), bad)


def _tabular(frame: pd.DataFrame, source: str, path, target: str | None, features: list[str] | str | None,
             signal: bool = False, channels: int | None = None, skip_unreadable: bool = False) -> Dataset:
    table = tables.columns(frame, source, target, features)
    x, codes, classes, skipped = table.x, table.codes, table.classes, 0
    rows = _usable(f"{source} {path}", table.problems, "rows", skip_unreadable, len(x))
    if rows is not None:  # the classes of the rows kept, numbered again
        x, skipped = x[rows], len(x) - len(rows)
        codes, kept = pd.factorize(np.asarray(classes, dtype=object)[codes[rows]], sort=True)
        classes = [str(c) for c in kept]
    if signal:  # the columns, in order, as the time steps of `channels` channels
        x = signals.fold(x, channels, source, table.features)
    return _finish(torch.from_numpy(np.ascontiguousarray(x)), codes, classes, feature_names=table.features,
                   skipped=skipped)


def load_csv(path, target=None, features=None, signal=False, channels=None, skip_unreadable=False, **_) -> Dataset:
    """Tabular data from a CSV file: numeric feature columns plus a target column (trainlib.data.tables); with
    `signal`, the feature columns are the time steps of `channels` (default 1) channels. Every unusable cell is
    named (Unreadable), or with `skip_unreadable` its row is left out."""
    frame = tables.read_table(path, pd.read_csv, "csv")
    return _tabular(frame, "csv", path, target, features, signal, channels, skip_unreadable)


def load_parquet(path, target=None, features=None, signal=False, channels=None, skip_unreadable=False,
                 **_) -> Dataset:
    """As load_csv, from a Parquet file."""
    frame = tables.read_table(path, pd.read_parquet, "parquet")
    return _tabular(frame, "parquet", path, target, features, signal, channels, skip_unreadable)


def _signals(x: np.ndarray, y: np.ndarray) -> Dataset:
    codes, uniques = pd.factorize(pd.Series(y), sort=True)
    return _finish(signals.as_tensor(x), codes, [str(u) for u in uniques])


def load_numpy(path, labels=None, target=None, **_) -> Dataset:
    """Signals from NumPy files (trainlib.data.signals.read_numpy): (N, L) or (N, C, L) arrays with their labels."""
    return _signals(*signals.read_numpy(path, labels, target or TARGETS[0]))


def load_waveforms(**_) -> Dataset:
    """The generated waveform set (trainlib.data.signals.waveforms): 3,000 signals of 128 steps, 5 classes."""
    return _finish(signals.as_tensor(signals.waveforms()), signals.waveform_labels(), list(signals.WAVE_CLASSES))


def load_torchvision(path, dataset=None, download=False, **_) -> Dataset:
    """MNIST, FashionMNIST or CIFAR10 from a local root in torchvision's layout; downloads only when
    `download`. Its train and test parts form one pool that the split step divides."""
    import torchvision.datasets as tvd

    if dataset not in TORCHVISION_DATASETS:
        raise ConfigError(f"data.dataset: {dataset!r} is not a torchvision dataset trainflow reads; "
                          f"valid: {', '.join(TORCHVISION_DATASETS)}")
    parts = []
    for train in (True, False):
        try:
            parts.append(getattr(tvd, dataset)(root=str(path), train=train, download=download))
        except RuntimeError as exc:
            raise DataError(f"{dataset} not found under {path} ({exc}); put the files there in torchvision's "
                            "layout or set data.download: true") from exc
    images, labels = [], []
    for part in parts:
        data = torch.as_tensor(np.asarray(part.data), dtype=torch.uint8)
        images.append(data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2))  # NHW / NHWC -> NCHW
        labels.append(torch.as_tensor(part.targets, dtype=torch.int64))
    return _finish(torch.cat(images).contiguous(), torch.cat(labels), list(parts[0].classes), value_max=255.0)


def imagefolder_fits(path, image_size=(32, 32), channels=None, stream=False, memory_budget=None, **_) -> None:
    """Raise DataError when the folder's images, decoded in memory, would not fit the memory budget (streamed
    images always fit). Lists the folder, decodes nothing."""
    if not stream and Path(path).is_dir():
        classes, names, labels = folders.list_images(Path(path))
        folders.check_fits(ImageFiles(str(path), names, labels, tuple(image_size), channels or 3), memory_budget)


@dataclass(frozen=True)
class Source:
    load: Callable[..., Dataset]
    dims: int  # of a sample: 3 images (C, H, W), 2 signals (C, L), 1 a table's feature columns (F,)
    needs_path: bool
    files: str | None = None  # how new data of this kind is read for scoring a batch at a time (trainlib.data.inputs):
    # "folder" (image files), "table" (CSV, Parquet); None: loaded whole, as for training
    fits: Callable[..., None] | None = None  # checks, before loading, that the data fits the memory budget
    model: str = "cnn"  # the model trained on it when model.name is unset (trainlib.data.defaults)


SOURCES: Registry[Source] = Registry("data source", {
    "digits": Source(load_digits, dims=3, needs_path=False),
    "imagefolder": Source(load_imagefolder, dims=3, needs_path=True, files="folder", fits=imagefolder_fits),
    "csv": Source(load_csv, dims=1, needs_path=True, files="table", model="mlp"),
    "parquet": Source(load_parquet, dims=1, needs_path=True, files="table", model="mlp"),
    "torchvision": Source(load_torchvision, dims=3, needs_path=True),
    "numpy": Source(load_numpy, dims=2, needs_path=True, model="cnn1d"),
    "waveforms": Source(load_waveforms, dims=2, needs_path=False, model="cnn1d"),
})


def load(source: str, **options) -> Dataset:
    """Ingest `source` with its options (path, dataset, target, features, image_size, ...)."""
    return SOURCES[source].load(**options)


def keep_classes(ds: Dataset, names: list[str]) -> Dataset:
    """Only the samples of the classes `names` (in that order: labels renumbered 0..len-1)."""
    unknown = [n for n in names if n not in ds.classes]
    if unknown:
        raise DataError(f"data.classes: {', '.join(map(repr, unknown))} not among this data's classes "
                        f"({', '.join(ds.classes)})")
    old = torch.tensor([ds.classes.index(n) for n in names])
    rows = torch.isin(ds.labels, old).nonzero().flatten()
    relabel = torch.full((len(ds.classes),), -1, dtype=torch.int64)
    relabel[old] = torch.arange(len(names))
    labels = relabel[ds.labels[rows]]
    if ds.streamed:
        inputs = ds.inputs.take(rows.numpy(), labels.numpy())
    else:
        inputs = ds.inputs[rows]
    return replace(ds, inputs=inputs, labels=labels, classes=list(names), digest=content_digest(ds.digest, names))


def save_dataset(ds: Dataset, path: str | Path) -> None:
    """Write a dataset to one file, readable with `torch.load(weights_only=True)`."""
    inputs = ds.inputs
    payload = {"labels": ds.labels, "classes": ds.classes, "digest": ds.digest,
               "value_max": ds.value_max, "feature_names": ds.feature_names, "skipped": ds.skipped}
    if isinstance(inputs, STREAMED):
        payload["files"] = inputs.state() | {"kind": type(inputs).__name__}
    else:
        payload["inputs"] = inputs
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_dataset(path: str | Path) -> Dataset:
    """Read a dataset written by `save_dataset`."""
    p = torch.load(path, weights_only=True)
    if "files" in p:
        kind = {c.__name__: c for c in STREAMED}[p["files"]["kind"]]
        inputs = kind.from_state(p["files"], p["labels"].numpy())
    else:
        inputs = p["inputs"]
    return Dataset(inputs, p["labels"], p["classes"], p["digest"], p["value_max"], p["feature_names"],
                   p.get("skipped", 0))


def fingerprint(source: str, path=None, labels=None, **_) -> str:
    """The identity of the source before ingesting it (its files' names, sizes and contents; the library
    version for the embedded digits), so an unchanged source, or a copy of it, can skip ingest. It reads every
    file once: names, sizes and modification times missed an edit that kept them, and hashing 20,000 small PNGs
    costs about 1 s more than their stat (sha256: about 1 GB/s per core here). An image folder's are its images as
    ingest lists them, whose digests ingest then takes instead of reading them again (folders.image_digests)."""
    if source == "digits":  # the version from the package metadata: importing sklearn takes half a second
        return content_digest("digits", importlib.metadata.version("scikit-learn"))
    if source == "waveforms":  # generated by trainlib.data.signals: its code is what identifies it
        return content_digest("waveforms", inspect.getsource(signals))
    root = Path(path)
    if not root.exists():
        return content_digest("missing", str(root))  # ingest itself reports the missing path
    if source == "imagefolder" and root.is_dir():  # its images, as ingest reads them (and with their digests)
        return folders.image_digests(str(root), folders.list_images(root)[1])[0]
    identity = folders.files_identity(root, folders.folder_files(root))
    if labels is not None:  # an .npy of signals with its labels in a second file
        return content_digest(identity, fingerprint(source, labels))
    return identity
