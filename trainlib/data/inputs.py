"""New data to score, read a batch at a time and prepared as the model's training data was (trainlib.scoring's
InputSpec): image folders (flat, or class-per-folder with labels), CSV and Parquet tables (with or without the
target column), NumPy files of signals (with or without labels), and the training sources themselves.

Each reader checks the data against the model when it opens (`check()`: kind, channels, feature columns by
name), so a mismatch is one error before anything is scored; a row that cannot be read (a corrupt image, a
missing feature value) is listed in `errors` with the reason and skipped. Row identity is kept: a file's path
within the folder, or a table's row number (from 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from trainlib.data import folders, signals
from trainlib.data.folders import decode_image
from trainlib.data.sources import Dataset
from trainlib.errors import DataError
from trainlib.scoring import Batch, InputSpec


def _label(value) -> str | None:
    """A label as a class name: 3 and 3.0 (pandas reads a column of ints with a gap as floats) are both "3"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _labels(values, classes: list[str]) -> np.ndarray:
    """Class indices of label values; -1 for a missing value or one that is not one of the model's classes."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(_label(v), -1) for v in values], dtype=np.int64)


class FolderReader:
    """Images under a folder, in sorted path order. Labelled when every image lies in a first-level folder named
    after one of the model's classes (the training layout); otherwise (a flat folder, say) unlabelled. (`target`,
    a table's label column, has no meaning here.)"""

    def __init__(self, root: str | Path, spec: InputSpec, target: str | None = None, workers: int = 4):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.root, self.spec, self.workers = Path(root), spec, workers
        if not self.root.is_dir():
            raise DataError(f"--data: no such folder: {self.root}")
        found = sorted(os.path.relpath(p, self.root).split(os.sep) for p in folders.walk(str(self.root))
                        if p.lower().endswith(IMG_EXTENSIONS))
        if not found:
            raise DataError(f"--data {self.root}: no image files ({', '.join(IMG_EXTENSIONS)}) in it")
        self.labelled = all(len(parts) == 2 and parts[0] in spec.classes for parts in found)
        # the names relative to root as one byte-string array: a scored folder of 200,000 images holds a few MiB of
        # names, not a Python object per file (Path objects took about 0.7 KiB each)
        self.names = np.array([os.fsencode(os.path.join(*parts)) for parts in found], dtype=np.bytes_)
        self.errors: list[tuple[str, str]] = []

    def check(self) -> None:
        """The model takes images (any folder is converted to its channels and size)."""
        if not self.spec.image:
            raise DataError(f"--data {self.root}: a folder of images, but the model takes {self.spec.describe()}")

    def __len__(self) -> int:
        return len(self.names)

    def _decode(self, name: str) -> np.ndarray | str:
        c, h, w = self.spec.shape
        try:
            return decode_image(str(self.root / name), (h, w), c)
        except DataError as exc:
            return str(exc)

    def batches(self, size: int) -> Iterator[Batch]:
        """Batches of decoded images; the next batch decodes in the pool while the caller scores this one."""
        starts = range(0, len(self.names), size)
        with ThreadPoolExecutor(self.workers) as pool:  # PIL decodes without the GIL
            def submit(start: int) -> tuple[list[str], list]:
                chunk = [os.fsdecode(n) for n in self.names[start:start + size]]
                return chunk, [pool.submit(self._decode, name) for name in chunk]

            pending = submit(0)
            for start in starts:
                chunk, futures = pending
                decoded = [f.result() for f in futures]
                pending = submit(start + size) if start + size < len(self.names) else ([], [])
                yield self._batch(chunk, decoded)

    def _batch(self, chunk: list[str], decoded: list[np.ndarray | str]) -> Batch:
        ids, arrays, labels = [], [], []
        for name, image in zip(chunk, decoded, strict=True):
            if isinstance(image, str):
                self.errors.append((name, image))
                continue
            ids.append(name)
            arrays.append(image)
            labels.append(Path(name).parent.name)
        inputs = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, *self.spec.shape), np.float32)
        return Batch(ids, inputs, _labels(labels, self.spec.classes) if self.labelled else None)


class _Csv:
    """A CSV file: its header, its rows in chunks, its row count (a parse of one column: quoted line breaks and a
    missing last newline count right)."""

    name = "CSV"

    def columns(self, path: Path) -> list[str]:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]

    def chunks(self, path: Path, columns: list[str], size: int) -> Iterator[pd.DataFrame]:
        yield from pd.read_csv(path, usecols=columns, chunksize=size)

    def rows(self, path: Path, first: str) -> int:
        return sum(len(c) for c in pd.read_csv(path, usecols=[first], chunksize=1 << 16))


class _Parquet:
    """A Parquet file, read a record batch at a time."""

    name = "Parquet"

    def columns(self, path: Path) -> list[str]:
        return [str(c) for c in _parquet(path).schema_arrow.names]

    def chunks(self, path: Path, columns: list[str], size: int) -> Iterator[pd.DataFrame]:
        for part in _parquet(path).iter_batches(batch_size=size, columns=columns):
            yield part.to_pandas()

    def rows(self, path: Path, first: str) -> int:
        return _parquet(path).metadata.num_rows


def _parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


TABLES = {".csv": _Csv(), ".parquet": _Parquet(), ".pq": _Parquet()}


class TableReader:
    """A CSV or Parquet file read in chunks. A model trained on a table's columns (a table model, or signals read
    from a table) takes them by name (in the model's order, whatever the file's); any other model reads every
    column but the target as one flattened sample (image or signal), in column order. Labelled when the target
    column is present. A cell that is not a finite number (empty, a word, inf)
    makes its row unreadable; a feature column with no number at all in a chunk is the file's problem."""

    def __init__(self, path: str | Path, spec: InputSpec, target: str = "label"):
        self.path, self.spec, self.target = Path(path), spec, target
        if not self.path.is_file():
            raise DataError(f"--data: no such file or folder: {self.path}")
        self.format = TABLES.get(self.path.suffix.lower())
        if self.format is None:
            raise DataError(f"--data {self.path}: a folder of images, or a table ending in {', '.join(TABLES)}")
        try:
            self.columns = self.format.columns(self.path)
        except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
            raise DataError(f"--data {self.path}: cannot read it as {self.format.name}: {exc}") from exc
        self.labelled = target in self.columns
        self.features = list(spec.feature_names) or [c for c in self.columns if c != target]
        self.errors: list[tuple[str, str]] = []

    def check(self) -> None:
        """The model's feature columns are there (by name), or a flattened sample's count of values is."""
        if self.spec.feature_names:
            missing = [c for c in self.spec.feature_names if c not in self.columns]
            if missing:
                raise DataError(f"--data {self.path}: missing feature column{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(missing)}; the model takes {', '.join(self.spec.feature_names)}")
            return
        need = math.prod(self.spec.shape)
        if len(self.features) != need:
            raise DataError(f"--data {self.path}: {len(self.features)} feature columns, but the model takes "
                            f"{self.spec.describe()}: {need} values per row (every column but {self.target!r}, "
                            "in order)")

    def batches(self, size: int) -> Iterator[Batch]:
        """The rows `size` at a time, the unreadable ones listed in `errors` instead."""
        first = 0
        wanted = [*self.features, *([self.target] if self.labelled else [])]
        for frame in self.format.chunks(self.path, wanted, size):
            if frame.empty:
                continue
            numbers = frame[self.features].apply(pd.to_numeric, errors="coerce")
            words = [c for c in self.features if numbers[c].isna().all() and not frame[c].isna().all()]
            if words:  # a column of words is the file's problem, not a few rows'
                raise DataError(f"--data {self.path}: feature columns must be numeric; not numeric: "
                                f"{', '.join(words)}")
            x = numbers.to_numpy(dtype=np.float32)
            finite = np.isfinite(x)
            ok = finite.all(1)
            ids = [str(i) for i in range(first, first + len(frame))]
            for i in np.flatnonzero(~ok):
                bad = [c for c, v in zip(self.features, finite[i], strict=True) if not v]
                self.errors.append((ids[i], f"missing, infinite or not a number in {', '.join(bad[:5])}"
                                            f"{' ...' if len(bad) > 5 else ''}"))
            labels = _labels(frame[self.target][ok], self.spec.classes) if self.labelled else None
            yield Batch([ids[i] for i in np.flatnonzero(ok)], x[ok].reshape(-1, *self.spec.shape), labels)
            first += len(frame)

    def __len__(self) -> int:
        return self.format.rows(self.path, self.columns[0]) if self.columns else 0


class DatasetReader:
    """A dataset ingested by a training source (the embedded digits, a torchvision set), with its labels."""

    def __init__(self, dataset: Dataset, spec: InputSpec, name: str):
        self.dataset, self.spec, self.name, self.labelled = dataset, spec, name, True
        self.errors: list[tuple[str, str]] = []

    def check(self) -> None:
        """The dataset's samples have the model's shape."""
        shape = list(self.dataset.sample_shape)
        if shape != list(self.spec.shape):
            raise DataError(f"{self.name}: samples of shape {tuple(shape)}, but the model takes "
                            f"{self.spec.describe()} {tuple(self.spec.shape)}")

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, size: int) -> Iterator[Batch]:
        """The samples `size` at a time, in order, with their labels."""
        inputs, names = self.dataset.inputs, self.dataset.classes
        for start in range(0, len(self.dataset), size):
            stop = min(start + size, len(self.dataset))
            labels = [names[i] for i in self.dataset.labels[start:stop].tolist()]
            yield Batch([str(i) for i in range(start, stop)], inputs[start:stop].numpy().astype(np.float32),
                        _labels(labels, self.spec.classes))


class NumpyReader:
    """Signals (or any samples of the model's shape) in an .npz, labelled when it has a labels array (named by the
    training's target, or y, labels, label), or in an .npy, unlabelled and read through a memory map (an .npz's
    arrays are read whole: NumPy cannot map them). An (N, L) array is N signals of one channel. A sample holding
    NaN or an infinity is listed in `errors` and skipped. Rows are numbered from 0."""

    def __init__(self, path: str | Path, spec: InputSpec, target: str = "label"):
        self.path, self.spec = Path(path), spec
        if not self.path.is_file():
            raise DataError(f"--data: no such file or folder: {self.path}")
        x, self.y = signals.numpy_arrays(self.path, target=target, need_labels=False)
        self.x = x[:, None, :] if x.ndim == 2 and len(spec.shape) == 2 else x
        self.labelled = self.y is not None
        self.errors: list[tuple[str, str]] = []

    def check(self) -> None:
        """The samples have the model's shape and are numbers."""
        if self.x.ndim < 1 or list(self.x.shape[1:]) != list(self.spec.shape):
            raise DataError(f"--data {self.path}: samples of shape {tuple(self.x.shape[1:])}, but the model takes "
                            f"{self.spec.describe()} {tuple(self.spec.shape)}")
        if not np.issubdtype(self.x.dtype, np.number) or np.issubdtype(self.x.dtype, np.complexfloating):
            raise DataError(f"--data {self.path}: samples must be real numbers; this array holds {self.x.dtype}")

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, size: int) -> Iterator[Batch]:
        """The samples `size` at a time, in order; those with NaN or infinite values listed in `errors`."""
        for start in range(0, len(self.x), size):
            x = np.asarray(self.x[start:start + size], dtype=np.float32)
            ok = np.isfinite(x).reshape(len(x), -1).all(1)
            ids = [str(i) for i in range(start, start + len(x))]
            self.errors += [(ids[i], "NaN or infinite values") for i in np.flatnonzero(~ok)]
            labels = _labels(self.y[start:start + size][ok], self.spec.classes) if self.labelled else None
            yield Batch([ids[i] for i in np.flatnonzero(ok)], x[ok], labels)


READERS = {"folder": FolderReader, "table": TableReader, "numpy": NumpyReader}


def kind_of(path: str | Path) -> str:
    """Which reader opens new data at `path`: a folder of images, an .npz or .npy of signals, else a table."""
    path = Path(path)
    return "folder" if path.is_dir() else "numpy" if path.suffix.lower() in (".npz", ".npy") else "table"
