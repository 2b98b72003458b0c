"""Augment: build and check the augmentation, render its preview, expand the train split if asked."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.config import AugmentConfig
from trainlib.data.augment import Augmenter
from trainlib.data.sources import load_dataset
from trainlib.data.split import load_manifest

PREVIEW_POOL = 256  # train samples the preview picks from (one per class first)


@task(name="augment")
def augment(augment: AugmentConfig, dataset: dict, manifest: dict, seed: int, workspace: str, run_id: str) -> dict:
    """-> {active, preview, expanded}: expanded is a file of the augmented train split (expand > 0)."""
    ds, m = load_dataset(dataset["path"]), load_manifest(manifest["path"])
    aug = recipe.augmenter(augment, ds)
    out = {"active": aug is not None, "preview": None, "expanded": None}
    train = recipe.part(ds, m, "train", workers=0)
    if ds.is_image:
        x, y = next(train.batches(PREVIEW_POOL))
        shown = aug or Augmenter(value_max=ds.value_max)  # with augmentation off: the originals alone
        grid = shown.preview(x, y, rows=4 if aug else 0, generator=torch.Generator().manual_seed(seed))
        out["preview"] = str(Path(workspace) / "augmentation_preview.png")
        plots.augmentation_grid(grid, ds.value_max).savefig(out["preview"])
        RunLogger(run_id).log_artifact(out["preview"])
    if aug and augment.expand:
        expanded = recipe.expand(train, aug, augment.expand, seed)
        out["expanded"] = str(Path(workspace) / "train_expanded.pt")
        torch.save({"inputs": expanded.inputs, "labels": expanded.labels}, out["expanded"])
    return out
