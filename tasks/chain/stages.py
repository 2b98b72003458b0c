"""What the cached data stages' outputs depend on: their cache keys. Kept apart from the stages (tasks/chain/ingest.py,
tasks/chain/split.py), which are Prefect tasks, so that a command can find what is cached before it loads Prefect
(flows/preflight.py)."""

from __future__ import annotations

from tasks.settings import stage_key
from trainlib.config import DataConfig, SplitConfig
from trainlib.data.sources import fingerprint


def ingest_key(data: DataConfig, signal: bool = False) -> str:
    """What the data read depends on (label noise is the split's: the same data is read with or without it; the
    decoding processes and the memory budget change how, not what)."""
    read = data.model_dump(mode="json", exclude={"label_noise", "workers", "memory_budget"})
    return stage_key("ingest", read, signal, fingerprint(data.source, data.path, data.labels))


def split_key(digest: str, split: SplitConfig, label_noise: float = 0.0) -> str:
    """What a split depends on: the dataset's content, the split config, the label noise."""
    return stage_key("split", digest, split.model_dump(), label_noise)
