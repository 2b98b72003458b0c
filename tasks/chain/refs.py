"""What passes between tasks: small typed references to files in the stage cache or the run workspace.

Each is a frozen dataclass holding the file's path and what identifies its content, with a `.load()` that
reads it back. They are plain data, so Prefect persists them as cached task results and Dask ships them to
its workers; the big things (datasets, models) stay in their files. Flows and tasks call them by the same
names: `dataset`, `manifest`, `stats`, `augmented`, `trained`, `source`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from trainlib.checkpoint import atomic_path
from trainlib.cost import Cost
from trainlib.data.batches import TensorData
from trainlib.data.folders import file_digest
from trainlib.data.normalize import NormStats
from trainlib.data.sources import Dataset, load_dataset
from trainlib.data.split import load_manifest
from trainlib.models import Classifier, load_model


@dataclass(frozen=True)
class DatasetRef:
    """An ingested dataset file (trainlib.data.sources.save_dataset) and what it holds."""

    path: str
    digest: str  # of the content: the same data read from anywhere has the same digest
    samples: int
    classes: tuple[str, ...]
    shape: tuple[int, ...]  # one sample's
    source: str  # the path or name it was read from
    skipped: int = 0  # unreadable rows or files left out (data.skip_unreadable)

    def load(self) -> Dataset:
        return load_dataset(self.path)


@dataclass(frozen=True)
class ManifestRef:
    """A split manifest: every sample's row, label and split (train / val / test)."""

    path: str
    digest: str
    counts: dict[str, int] = field(hash=False)  # samples per split

    def load(self) -> pd.DataFrame:
        return load_manifest(self.path)


@dataclass(frozen=True)
class StatsRef:
    """Normalization statistics fitted on a train split (a JSON file)."""

    path: str
    method: str

    def load(self) -> NormStats:
        return NormStats.load(self.path)


@dataclass(frozen=True)
class AugmentedRef:
    """What the augment stage made: whether augmentation is on, its preview image, and the expanded train
    split (augment.expand > 0), identified by what it was made from."""

    active: bool
    preview: str | None = None
    expanded: str | None = None  # file of the train split plus its augmented copies
    digest: str | None = None  # of the expanded split's inputs: dataset, manifest, augment config, seed

    def load(self) -> TensorData | None:
        """The expanded train split, or None when the train split is used as it is."""
        if self.expanded is None:
            return None
        return TensorData(**torch.load(self.expanded, weights_only=True))

    @staticmethod
    def save_expanded(data: TensorData, path: Path) -> None:
        with atomic_path(path) as tmp:  # a killed process leaves no half-written file behind
            torch.save({"inputs": data.inputs, "labels": data.labels}, tmp)


@dataclass(frozen=True)
class TrainedRef:
    """A trained model file (architecture, weights, classes, config) and how its training went."""

    model: str  # trainlib.models.save_model file
    history: str  # JSON list of the per-epoch metrics
    best_epoch: int
    stopped_epoch: int
    stop_reason: str
    train_seconds: float
    cost: Cost | None = None  # wall and CPU seconds, peak memory of the training (trainlib.cost)

    def load(self) -> Classifier:
        return load_model(self.model)[0]

    def epochs(self) -> list[dict]:
        """The per-epoch metrics."""
        return json.loads(Path(self.history).read_text())

    def summary(self) -> dict:
        """best_epoch, stopped_epoch, train_seconds, the cost metrics, and the best epoch's val_loss and
        val_accuracy."""
        out = {"best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch,
               "train_seconds": self.train_seconds} | (self.cost.metrics() if self.cost else {})
        history = self.epochs()
        if history and "val_accuracy" in history[0]:
            row = history[self.best_epoch - 1]
            out |= {"best_val_loss": row["val_loss"], "best_val_accuracy": row["val_accuracy"]}
        return out


@dataclass(frozen=True)
class SourceRef:
    """A transfer-learning source as a local file, with its architecture and where it came from."""

    uri: str  # as the user gave it: models:/name@alias, a file, torchvision:name
    path: str  # the local file (or torchvision:name, read from the torch cache)
    model: str  # its architecture's name in the model registry
    options: dict = field(hash=False)  # the architecture's sizes
    classes: tuple[str, ...] | None = None
    source_run_id: str | None = None  # the registered version's run, for lineage
    source_version: str | None = None

    def identity(self) -> str:
        """What the source's weights are: the file's content digest, or the name of a torchvision model."""
        path = Path(self.path)
        return file_digest(path)[1] if path.is_file() else self.uri
