"""Train/validation/test split as a pandas manifest: one row per sample (index, label, split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainlib.checkpoint import atomic_path
from trainlib.errors import DataError

SPLITS = ("train", "val", "test")
UNUSED = "unused"  # train rows left out by a few-shot split (shots per class)
COLUMNS = ["index", "label", "split"]  # and `clean_label` after label noise (flip_labels)


def _counts(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """Sizes of each split for n samples: val and test rounded, train takes the rest."""
    val, test = round(n * ratios["val"]), round(n * ratios["test"])
    return {"train": n - val - test, "val": val, "test": test}


def split_manifest(labels, train: float = 0.7, val: float = 0.15, test: float = 0.15,
                   stratify: bool = True, seed: int = 0, classes: list[str] | None = None,
                   shots: int | None = None, imbalance: float | None = None) -> pd.DataFrame:
    """Assign every sample to exactly one split, deterministically for a seed.

    With `stratify`, each class is split by the ratios on its own, so every split keeps the class
    proportions. With `shots`, only that many train samples per class stay in train (few-shot
    learning); the other train rows are marked `unused`, val and test keep theirs. With `imbalance` r, class i
    of K keeps a fraction r^(-i/(K-1)) of its train rows (at least one): the first class all, the last 1/r, a
    long tail; the rest are `unused`, val and test stay balanced.
    Returns columns `index` (row in the dataset), `label`, `split`, sorted by index.
    """
    labels = np.asarray(labels)
    ratios = {"train": train, "val": val, "test": test}
    wanted = [s for s in SPLITS if ratios[s] > 0]
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    assigned = np.empty(len(labels), dtype=object)
    for members in groups:
        counts = _counts(len(members), ratios)
        empty = [s for s in wanted if counts[s] == 0]
        if empty:
            what = "the dataset" if not stratify else f"class {_name(labels[members[0]], classes)!r}"
            raise DataError(f"{what} has {len(members)} samples: too few for a{' stratified' if stratify else ''} "
                            f"split into {'/'.join(wanted)} with ratios "
                            f"{'/'.join(str(ratios[s]) for s in wanted)} ({', '.join(empty)} would be empty)")
        order = rng.permutation(members)
        edges = np.cumsum([counts[s] for s in SPLITS])[:-1]
        for name, part in zip(SPLITS, np.split(order, edges), strict=True):
            assigned[part] = name
    if shots:
        _few_shot(labels, assigned, shots, rng, classes)
    if imbalance:
        _long_tail(labels, assigned, imbalance, rng)
    left_out = bool(shots or imbalance)
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels.astype(np.int64),
                         "split": pd.Categorical(assigned, categories=[*SPLITS, UNUSED] if left_out else list(SPLITS))})


NOISE_STREAM = 0x6E6F6973  # label noise draws from its own stream of the split seed: the split stays as it is


def flip_labels(manifest: pd.DataFrame, fraction: float, seed: int, n_classes: int) -> pd.DataFrame:
    """Label noise: round(fraction x train rows) train rows, chosen by `seed`, get another class, drawn uniformly
    from the others. Val, test and unused rows keep theirs. The manifest's `label` is then the label trained on,
    and a `clean_label` column keeps the true one. A fraction of 0 returns the manifest as it is."""
    if not fraction:
        return manifest
    if n_classes < 2:
        raise DataError("data.label_noise: flipping a label needs at least 2 classes")
    rng = np.random.default_rng([seed, NOISE_STREAM])
    train = np.flatnonzero((manifest["split"] == "train").to_numpy())
    chosen = rng.choice(train, size=round(fraction * len(train)), replace=False)
    labels = manifest["label"].to_numpy(dtype=np.int64).copy()
    labels[chosen] = (labels[chosen] + rng.integers(1, n_classes, size=len(chosen))) % n_classes
    out = manifest.copy()
    out["clean_label"] = manifest["label"].to_numpy(dtype=np.int64)
    out["label"] = labels
    return out


def _few_shot(labels: np.ndarray, assigned: np.ndarray, shots: int, rng: np.random.Generator, classes) -> None:
    """Keep `shots` train rows per class, marking the rest unused."""
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & (assigned == "train"))
        if len(rows) < shots:
            raise DataError(f"split.shots: class {_name(c, classes)!r} has {len(rows)} train samples, fewer than "
                            f"the {shots} shots asked for")
        assigned[rng.permutation(rows)[shots:]] = UNUSED


def _long_tail(labels: np.ndarray, assigned: np.ndarray, ratio: float, rng: np.random.Generator) -> None:
    """Class i of K keeps round(n_i x ratio^(-i/(K-1))) of its n_i train rows, at least one; the rest unused."""
    present = np.unique(labels)
    for i, c in enumerate(present):
        rows = np.flatnonzero((labels == c) & (assigned == "train"))
        keep = max(1, round(len(rows) * ratio ** (-i / max(len(present) - 1, 1))))
        assigned[rng.permutation(rows)[keep:]] = UNUSED


def _name(label, classes):
    return classes[int(label)] if classes else int(label)


def indices(manifest: pd.DataFrame, split: str) -> np.ndarray:
    """Dataset rows of one split, in index order."""
    return manifest.loc[manifest["split"] == split, "index"].to_numpy(dtype=np.int64)


def merge(manifest: pd.DataFrame, source: str = "val", into: str = "train") -> pd.DataFrame:
    """The same manifest with split `source` relabelled `into` (e.g. retraining on train+val)."""
    out = manifest.copy()
    out.loc[out["split"] == source, "split"] = into
    return out


def save_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        manifest.to_csv(tmp, index=False)


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by `save_manifest`, checking its shape."""
    frame = pd.read_csv(path)
    shaped = list(frame.columns) in (COLUMNS, [*COLUMNS, "clean_label"])
    if not shaped or not frame["split"].isin([*SPLITS, UNUSED]).all():
        raise DataError(f"{path} is not a split manifest (columns index,label,split; splits {', '.join(SPLITS)})")
    unused = [UNUSED] if (frame["split"] == UNUSED).any() else []
    frame["split"] = pd.Categorical(frame["split"], categories=[*SPLITS, *unused])
    return frame
