"""What a config leaves to its data: the model (by a sample's dimensions: a data source's own), a table's target
column (`label`, else a lone `target` or `class` column, the names pandas and scikit-learn frames write), and the
name (the data's and the model's: `wine-mlp`), so a new data set never lands in another's experiment or registered
model. Filled in when a config is validated: the config a run records holds what was used."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainlib.data.sources import SOURCES
from trainlib.data.tables import TARGETS, target_column


def fill(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (a config's mapping, sections as mappings or models) with its unset name, model.name and data.target
    filled in from its data."""
    data, model = raw.get("data") or {}, raw.get("model") or {}
    source = _get(data, "source") or "digits"
    if source not in SOURCES:  # the field's own check names the valid sources
        return raw
    out = dict(raw)
    if _get(data, "target") is None:
        out["data"] = data = _set(data, "target", _target(source, _get(data, "path")))
    if _get(model, "name") is None:
        out["model"] = model = _set(model, "name", SOURCES[source].model)
    if out.get("name") is None:
        out["name"] = name(source, _get(data, "path"), _get(data, "dataset"), _get(model, "name"))
    return out


def name(source: str, path: str | None, dataset: str | None, model: str) -> str:
    """`<data>-<model>`: the data is its file's or folder's stem, a torchvision data set's name, or the source's."""
    stem = Path(path).stem if path and SOURCES[source].needs_path and source != "torchvision" else dataset or source
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(stem)).strip("-._") or source
    return f"{stem}-{model}".lower() if source == "torchvision" else f"{stem}-{model}"


def _target(source: str, path: str | None) -> str | None:
    """A table's class column, found in its header (None: none is, and ingest says so; `label` when the header
    cannot be read now: ingest says why); `label` for other sources."""
    if SOURCES[source].files != "table" or not path or not Path(path).is_file():
        return TARGETS[0]
    try:
        if source == "parquet":
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
        else:
            import pandas as pd

            columns = list(pd.read_csv(path, nrows=0).columns)
    except Exception:  # noqa: BLE001  unreadable: ingest reports it, with the file's own error
        return TARGETS[0]
    return target_column(columns, None)


def _get(section: Any, key: str) -> Any:
    return section.get(key) if isinstance(section, dict) else getattr(section, key, None)


def _set(section: Any, key: str, value: Any) -> Any:
    return {**section, key: value} if isinstance(section, dict) else section.model_copy(update={key: value})
