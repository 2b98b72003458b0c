"""Scoring new data with a trained model: what the model takes (`InputSpec`, kept with the registered model),
the drift of new inputs from its training data, and the streaming loop that writes one prediction per row.

Memory stays bounded by the batch: inputs are read a batch at a time (trainlib.data.inputs), predictions are
appended to the output file as they come, labels only add to a (K, K) confusion matrix and drift to per-channel
sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainlib.errors import ConfigError
from trainlib.metrics import of_confusion

OUTPUTS = (".parquet", ".csv")


@dataclass(frozen=True)
class InputSpec:
    """What a trained model takes, and its training data's statistics: kept in the registered model's metadata
    (key `trainflow`), so new data is prepared as its training data was and compared with it."""

    classes: list[str]
    shape: list[int]  # one sample's: (C, H, W) for images, (C, L) for signals, (F,) for a table
    image: bool
    feature_names: list[str]  # a table's columns, in input order (of signals read from a table: its columns in
    # the order they fill the channels; [] for images and other signals)
    value_max: float | None  # the training source's largest pixel value (digits 16, image files 255)
    mean: list[float]  # per channel (images, signals) or feature (table), of the train split, in raw units
    std: list[float]

    def to_dict(self) -> dict:
        """As the model's metadata keeps it (plain JSON values)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        """Read back from the model's metadata (keys other tools may add are left out)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        """What the model takes, in words: `grayscale images of 8x8 pixels`, `signals of 1 channel x 128 steps`,
        `a table of 4 feature columns (...)`."""
        if len(self.shape) == 3:
            c, h, w = self.shape
            return f"{'grayscale' if c == 1 else 'RGB'} images of {h}x{w} pixels"
        if len(self.shape) == 2:
            c, length = self.shape
            return f"signals of {c} channel{'s' if c > 1 else ''} x {length} steps"
        return f"a table of {len(self.feature_names)} feature columns ({', '.join(self.feature_names)})"

    def channel_names(self) -> list[str]:
        """The names drift is reported under: a table's feature columns, or `channel 0`, `channel 1`, ..."""
        return self.feature_names if len(self.shape) == 1 else [f"channel {i}" for i in range(self.shape[0])]


@dataclass
class Batch:
    ids: list[str]  # row identity: a file's path within the folder, or a table's row number
    inputs: np.ndarray  # float32, (n, *spec.shape), in the source's units
    labels: np.ndarray | None  # int64 class indices, -1 where a row's label is not one of the model's classes


@dataclass(frozen=True)
class DriftReport:
    """New inputs against the training split, per channel or feature: the mean's shift in training standard
    deviations, and the spread's change as ln(std new / std training). `score` is the largest of the shifts and
    the spreads' absolute values."""

    names: list[str]
    mean: list[float]
    std: list[float]
    shift: list[float]
    spread: list[float]
    score: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.score > self.threshold

    def worst(self) -> str:
        """The channel or feature that moved most, in words."""
        i = int(np.argmax(np.maximum(self.shift, np.abs(self.spread))))
        return (f"{self.names[i]}: mean moved {self.shift[i]:.2f} training standard deviations, spread x"
                f"{math.exp(self.spread[i]):.2f}")


class Drift:
    """Per-channel (images) or per-feature (table) moments of new inputs, accumulated in float64 a batch at a
    time, compared with the training split's."""

    def __init__(self, spec: InputSpec):
        self.spec, self.count = spec, 0
        self.total = np.zeros(len(spec.mean))
        self.squares = np.zeros(len(spec.mean))

    def update(self, x: np.ndarray) -> None:
        """Add a batch of inputs (n, C, H, W) or (n, F) to the sums."""
        flat = x.astype(np.float64).swapaxes(0, 1).reshape(x.shape[1], -1)  # (C, n*H*W) or (F, n)
        self.total += flat.sum(1)
        self.squares += (flat * flat).sum(1)
        self.count += flat.shape[1]

    def report(self, threshold: float) -> DriftReport | None:
        """The drift of everything added so far against the training split; None when nothing was added."""
        if not self.count:
            return None
        mean = self.total / self.count
        std = np.sqrt(np.clip(self.squares / self.count - mean * mean, 0, None))
        train_mean, train_std = np.array(self.spec.mean), np.maximum(np.array(self.spec.std), 1e-8)
        shift = np.abs(mean - train_mean) / train_std
        # a constant feature that stays constant has not changed; one that became constant changes by ln(1e-8)
        spread = np.log(np.maximum(std, 1e-8) / train_std)
        spread[(std < 1e-8) & (train_std <= 1e-8)] = 0.0
        score = float(max(shift.max(), np.abs(spread).max()))
        return DriftReport(self.spec.channel_names(), mean.tolist(), std.tolist(), shift.tolist(), spread.tolist(),
                           score, threshold)


def output_format(path: str | Path) -> str:
    """The output file's format by its extension; anything else is bad input."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUTS:
        raise ConfigError(f"--out {path}: give a .parquet or .csv file")
    return suffix


class PredictionWriter:
    """Appends each batch's predictions to a Parquet or CSV file: id, predicted class, its probability, the
    probability of every class (p_<class>), and the label when the data has one."""

    def __init__(self, path: str | Path, classes: list[str], labelled: bool, format: str | None = None):
        self.path, self.classes, self.labelled = Path(path), classes, labelled
        self.format = format or output_format(path)  # given: `path` is a temporary name for the output file
        self._parquet = None
        self.rows = 0

    def write(self, ids: list[str], probs: np.ndarray, labels: np.ndarray | None) -> None:
        """Append a batch: its row ids, class probabilities (n, K) and labels (class indices, -1 unknown)."""
        pred = probs.argmax(1)
        frame = pd.DataFrame({"id": ids, "predicted": np.asarray(self.classes, dtype=object)[pred],
                              "probability": probs[np.arange(len(pred)), pred]})
        if self.labelled:
            known = labels >= 0
            frame["label"] = np.where(known, np.asarray(self.classes, dtype=object)[np.where(known, labels, 0)], None)
        frame = pd.concat([frame, pd.DataFrame(probs, columns=[f"p_{c}" for c in self.classes])], axis=1)
        if self.format == ".csv":
            frame.to_csv(self.path, mode="a" if self.rows else "w", header=not self.rows, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            # one schema for every batch: a batch whose labels are all unknown (None) must not make `label` a null
            # column that the next batch's strings would not fit
            schema = pa.schema([("id", pa.string()), ("predicted", pa.string()), ("probability", pa.float32()),
                                *([("label", pa.string())] if self.labelled else []),
                                *[(f"p_{c}", pa.float32()) for c in self.classes]])
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, schema)
            self._parquet.write_table(table)
        self.rows += len(frame)

    def close(self) -> None:
        """Finish the file (a Parquet file is unreadable until closed)."""
        if not self.rows:  # nothing scored: still a file with the columns, so readers need no special case
            self.write([], np.zeros((0, len(self.classes)), dtype=np.float32),
                       np.zeros(0, dtype=np.int64) if self.labelled else None)
        if self._parquet is not None:
            self._parquet.close()


@dataclass
class Scored:
    """What a scoring pass did."""

    rows: int  # predicted
    errors: list[tuple[str, str]]  # (row id, why it was skipped)
    drift: DriftReport | None
    confusion: np.ndarray | None = None  # (K, K) over rows whose label is a model class
    unknown_labels: int = 0  # rows whose label is not one of the model's classes
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities from logits or log-probabilities alike (an ensemble gives the latter)."""
    z = scores.astype(np.float64) - scores.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def score(predict: Callable[[np.ndarray], np.ndarray], batches: Iterator[Batch], spec: InputSpec,
          writer: PredictionWriter, errors: list[tuple[str, str]], drift_threshold: float,
          progress: Callable[[int], None] | None = None) -> Scored:
    """Predict every batch (`predict`: float32 inputs -> class scores), write the predictions, and accumulate
    drift and, for labelled rows, the confusion matrix. `errors` is the reader's list of skipped rows."""
    import time

    start, k = time.perf_counter(), len(spec.classes)
    drift, confusion, unknown = Drift(spec), np.zeros((k, k), dtype=np.int64), 0
    for batch in batches:
        if not len(batch.ids):
            continue
        probs = _softmax(np.asarray(predict(batch.inputs)))
        writer.write(batch.ids, probs, batch.labels)
        drift.update(batch.inputs)
        if batch.labels is not None:
            known = batch.labels >= 0
            unknown += int((~known).sum())
            confusion += np.bincount(batch.labels[known] * k + probs.argmax(1)[known],
                                     minlength=k * k).reshape(k, k)
        if progress:
            progress(len(batch.ids))
    writer.close()
    labelled = writer.labelled and confusion.sum() > 0
    out = Scored(writer.rows, errors, drift.report(drift_threshold), confusion if labelled else None, unknown,
                 time.perf_counter() - start)
    out.metrics = {"rows": float(writer.rows), "errors": float(len(errors)),
                   "rows_per_second": writer.rows / max(out.seconds, 1e-9)}
    if labelled:
        _, _, _, f1, support = of_confusion(confusion)
        # macro F1 over the classes present in the labels or the predictions (sklearn's rule): new data without
        # some class does not count that class as an F1 of 0
        present = (support + confusion.sum(0)) > 0
        out.metrics |= {"accuracy": float(np.trace(confusion) / confusion.sum()), "f1": float(f1[present].mean()),
                        "unknown_labels": float(unknown)}
    if out.drift is not None:
        out.metrics["drift_score"] = out.drift.score
    return out



def input_spec(dataset, moments) -> InputSpec:
    """The InputSpec of a model trained on `dataset` (trainlib.data.sources.Dataset) whose train split had these
    normalization `moments` (trainlib.data.normalize.Moments)."""
    return InputSpec(list(dataset.classes), list(dataset.sample_shape), dataset.is_image, list(dataset.feature_names),
                     dataset.value_max, list(moments.mean), list(moments.std))
