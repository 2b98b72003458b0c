"""Ingest: read the configured source into a dataset file (cached on the source's identity + config)."""

from __future__ import annotations

from prefect import task

from tasks.chain.refs import DatasetRef
from tasks.chain.stages import ingest_key
from tasks.settings import stage_dir, stage_key
from trainlib import recipe
from trainlib.config import DataConfig
from trainlib.data.sources import save_dataset


@task(name="ingest", cache_key_fn=lambda ctx, p: ingest_key(p["data"], p.get("signal", False)),
      persist_result=True)
def ingest(data: DataConfig, signal: bool = False) -> DatasetRef:
    """-> the dataset file and what it holds; with `signal`, a table's feature columns read as signals (C, L)."""
    ds = recipe.ingest(data, cache_dir=stage_dir("decoded"), signal=signal)
    path = stage_dir(stage_key("dataset", ds.digest, type(ds.inputs).__name__)) / "dataset.pt"
    save_dataset(ds, path)
    return DatasetRef(str(path), ds.digest, len(ds), tuple(ds.classes), tuple(ds.sample_shape),
                      str(data.path or data.source), ds.skipped)
