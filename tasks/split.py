"""Split: assign every sample to train/val/test (cached on the dataset digest + split config)."""

from __future__ import annotations

import pandas as pd
from prefect import task

from tasks.settings import stage_dir, stage_key
from trainlib import recipe
from trainlib.config import SplitConfig
from trainlib.data.sources import content_digest, load_dataset
from trainlib.data.split import load_manifest, merge, save_manifest


def _store(manifest: pd.DataFrame) -> dict:
    """-> {path, digest, counts}: the manifest CSV (index, label, split), content-addressed."""
    digest = content_digest(manifest["index"].to_numpy(), manifest["split"].astype(str).tolist())
    path = stage_dir(stage_key("manifest", digest)) / "split_manifest.csv"
    save_manifest(manifest, path)
    return {"path": str(path), "digest": digest, "counts": manifest["split"].value_counts().to_dict()}


@task(name="split", cache_key_fn=lambda ctx, p: stage_key("split", p["dataset"]["digest"], p["split"].model_dump()),
      persist_result=True)
def split(dataset: dict, split: SplitConfig) -> dict:
    return _store(recipe.split(load_dataset(dataset["path"]), split))


@task(name="merge-val")
def merge_val(manifest: dict) -> dict:
    """The manifest with the validation rows moved into train (retraining on train+val)."""
    return _store(merge(load_manifest(manifest["path"]), "val", into="train"))
