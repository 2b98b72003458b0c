"""Augment: build and check the augmentation, render its preview, expand the train split if asked."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from tasks.refs import AugmentedRef, DatasetRef, ManifestRef
from tasks.settings import stage_key
from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.config import AugmentConfig
from trainlib.data.augment import Augmenter

PREVIEW_POOL = 256  # train samples the preview picks from (one per class first)


@task(name="augment")
def augment(augment: AugmentConfig, dataset: DatasetRef, manifest: ManifestRef, seed: int, workspace: str,
            run_id: str) -> AugmentedRef:
    """-> whether augmentation is on, its preview, and the expanded train split (augment.expand > 0)."""
    ds, m = dataset.load(), manifest.load()
    aug = recipe.augmenter(augment, ds)
    train = recipe.part(ds, m, "train", workers=0)
    preview = expanded = digest = None
    if ds.is_image:
        x, y = next(train.batches(PREVIEW_POOL))
        shown = aug or Augmenter(value_max=ds.value_max)  # with augmentation off: the originals alone
        grid = shown.preview(x, y, rows=4 if aug else 0, generator=torch.Generator().manual_seed(seed))
        preview = str(Path(workspace) / "augmentation_preview.png")
        plots.augmentation_grid(grid, ds.value_max).savefig(preview)
        RunLogger(run_id).log_artifact(preview)
    if aug and augment.expand:
        expanded = str(Path(workspace) / "train_expanded.pt")
        AugmentedRef.save_expanded(recipe.expand(train, aug, augment.expand, seed), Path(expanded))
        digest = stage_key("expanded", dataset.digest, manifest.digest, augment.model_dump(mode="json"), seed)
    return AugmentedRef(aug is not None, preview, expanded, digest)
