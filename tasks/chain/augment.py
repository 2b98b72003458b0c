"""Augment: build and check the augmentation, render its preview, expand the train split if asked."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.chain.refs import AugmentedRef, DatasetRef, ManifestRef
from tasks.settings import stage_key
from tasks.tracking import RunLogger
from trainlib import recipe
from trainlib.config import AugmentConfig
from trainlib.data.kinds import kind

PREVIEW_POOL = 256  # train samples the preview picks from (one per class first)


@task(name="augment")
def augment(augment: AugmentConfig, dataset: DatasetRef, manifest: ManifestRef, seed: int, workspace: str,
            run_id: str) -> AugmentedRef:
    """-> whether augmentation is on, its preview, and the expanded train split (augment.expand > 0)."""
    ds, m = dataset.load(), manifest.load()
    aug = recipe.augmenter(augment, ds)
    train = recipe.part(ds, m, "train", workers=0)
    preview = expanded = digest = None
    x, y = next(train.batches(PREVIEW_POOL))
    figure = kind(ds.dims).preview(aug, x, y, ds.value_max, seed)  # with augmentation off: the originals alone
    if figure is not None:
        preview = str(Path(workspace) / "augmentation_preview.png")
        figure.savefig(preview)
        RunLogger(run_id).log_artifact(preview)
    if aug and augment.expand:
        expanded = str(Path(workspace) / "train_expanded.pt")
        AugmentedRef.save_expanded(recipe.expand(train, aug, augment.expand, seed), Path(expanded))
        digest = stage_key("expanded", dataset.digest, manifest.digest, augment.model_dump(mode="json"), seed)
    return AugmentedRef(aug is not None, preview, expanded, digest)
