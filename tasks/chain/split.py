"""Split: assign every sample to train/val/test (cached on the dataset digest + split config)."""

from __future__ import annotations

import pandas as pd
from prefect import task

from tasks.chain.refs import DatasetRef, ManifestRef
from tasks.chain.stages import split_key
from tasks.settings import stage_dir, stage_key
from trainlib import recipe
from trainlib.config import SplitConfig
from trainlib.data.sources import content_digest
from trainlib.data.split import merge, save_manifest


def _store(manifest: pd.DataFrame) -> ManifestRef:
    """The manifest CSV (index, label, split; clean_label with label noise), content-addressed."""
    noisy = [manifest["label"].to_numpy()] if "clean_label" in manifest.columns else []  # flipped labels differ
    digest = content_digest(manifest["index"].to_numpy(), manifest["split"].astype(str).tolist(), *noisy)
    path = stage_dir(stage_key("manifest", digest)) / "split_manifest.csv"
    save_manifest(manifest, path)
    return ManifestRef(str(path), digest, {str(k): int(v) for k, v in manifest["split"].value_counts().items()})


@task(name="split", cache_key_fn=lambda ctx, p: split_key(p["dataset"].digest, p["split"], p.get("label_noise", 0.0)),
      persist_result=True)
def split(dataset: DatasetRef, split: SplitConfig, label_noise: float = 0.0) -> ManifestRef:
    """The split manifest; with `label_noise` (data.label_noise) that fraction of train labels flipped."""
    return _store(recipe.split(dataset.load(), split, label_noise))


@task(name="merge-val")
def merge_val(manifest: ManifestRef) -> ManifestRef:
    """The manifest with the validation rows moved into train (retraining on train+val)."""
    return _store(merge(manifest.load(), "val", into="train"))
