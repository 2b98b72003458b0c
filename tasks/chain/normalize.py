"""Normalize: fit statistics on the train split (cached on dataset + manifest digests + method)."""

from __future__ import annotations

from prefect import task

from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from tasks.settings import stage_dir, stage_key
from trainlib import recipe
from trainlib.config import NormalizeConfig


def _key(ctx, p) -> str:
    return stage_key("normalize", p["dataset"].digest, p["manifest"].digest, p["normalize"].model_dump())


@task(name="normalize", cache_key_fn=_key, persist_result=True)
def normalize(dataset: DatasetRef, manifest: ManifestRef, normalize: NormalizeConfig, workers: int = 2) -> StatsRef:
    """-> the statistics JSON (`workers` decode streamed images; not part of the key)."""
    stats = recipe.fit_normalizer(dataset.load(), manifest.load(), normalize, workers)
    path = stage_dir(stage_key("normalization", stats.to_json())) / "normalization.json"
    stats.save(path)
    return StatsRef(str(path), stats.method)
