"""Per-sample test outcomes: which test samples a run's model got right, logged with the run (`test_outcomes.npz`:
the dataset's digest, the test rows, right or wrong), so that the registry gate can compare two versions on the
same test samples (McNemar's test, register.gate mcnemar)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from tasks import tracking

FILE = "test_outcomes.npz"


@dataclass(frozen=True)
class Outcomes:
    digest: str  # the dataset's
    rows: np.ndarray  # the test split's dataset rows
    correct: np.ndarray  # bool, per row
    labels: np.ndarray | None = None  # per row: the true class, the predicted one, the top probability (the model
    predicted: np.ndarray | None = None  # card's intervals, confusions, reliability); None in files logged
    confidence: np.ndarray | None = None  # before they were


def log(logger: tracking.RunLogger, digest: str, rows: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
        beside: str) -> None:
    """Log the outcomes of test `probabilities` (N, K) against `labels` to the run (written beside the file
    `beside`)."""
    path = Path(beside).with_name(FILE)
    predicted = probabilities.argmax(1)
    np.savez(path, digest=np.array(digest), rows=np.asarray(rows, dtype=np.int64),
             correct=np.asarray(predicted == labels, bool), labels=np.asarray(labels, np.int64),
             predicted=predicted.astype(np.int64), confidence=probabilities.max(1).astype(np.float64))
    logger.log_artifact(str(path))


def of_run(run_id: str) -> Outcomes | None:
    """The outcomes a run logged, or None (a run from before they were logged, or one that logs none: an
    ensemble's, a comparison's variant)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = tracking.client().download_artifacts(run_id, FILE, folder)
        except (MlflowException, OSError):
            return None
        with np.load(path) as data:
            more = [data[k] if k in data else None for k in ("labels", "predicted", "confidence")]
            return Outcomes(str(data["digest"]), data["rows"], data["correct"], *more)


def disagreements(new: Outcomes, old: Outcomes) -> tuple[int, int, int] | None:
    """On the test rows both were scored on (the same dataset): (b, c, n): b rows the new model gets right and the
    old one wrong, c the other way, n shared rows. None when they share no test row."""
    if new.digest != old.digest:
        return None
    shared, i, j = np.intersect1d(new.rows, old.rows, return_indices=True)
    if not len(shared):
        return None
    a, b = new.correct[i], old.correct[j]
    return int((a & ~b).sum()), int((~a & b).sum()), len(shared)


def counts(found: Outcomes) -> tuple[int, int]:
    """(right, scored): how many of its test samples a model got right, of how many."""
    return int(found.correct.sum()), len(found.correct)
