"""The project's stage cache (`.trainflow/cache/`), as `trainflow cache` lists and prunes it.

What lives there: a folder per cached stage output (`dataset-*`, `manifest-*`, `normalization-*`: content-addressed,
shared by every run that asks for the same thing), the decoded images of image folders (`decoded/<pack>`: reused row
by row by content, trainlib/data/decoded.py), and Prefect's cache records (`results/`) that point at the stage
folders. Nothing prunes it on its own: every new dataset, split or image size adds to it.

Pruning removes entries (all, or those whose newest file is older than a number of days) and, whenever it removes
anything, every cache record and the cache's generation (tasks/settings.py `stage_key`): no record can outlive the
files it points to, so the next run recomputes its stages (seconds) and still reuses the decoded images that were
kept. Prune when no run is going in the project: a run in progress may need what it removes.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tasks import settings

DAY = 86400.0
FIXED = ("generation", "decoded", "results")  # not stage folders


@dataclass(frozen=True)
class Entry:
    """One thing in the cache."""

    path: Path
    kind: str  # the stage (dataset, manifest, normalization, ...), `decoded images` or `cache records`
    bytes: int
    newest: float  # the modification time of its newest file (epoch seconds)

    def age_days(self, now: float) -> float:
        return (now - self.newest) / DAY


def _measured(path: Path, kind: str) -> Entry:
    size, newest = 0, path.stat().st_mtime
    for top, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(top, name))
            except OSError:  # removed while we looked
                continue
            size, newest = size + stat.st_size, max(newest, stat.st_mtime)
    return Entry(path, kind, size, newest)


def entries(root: Path | None = None) -> list[Entry]:
    """Everything in the cache, oldest first."""
    root = root or settings.HOME / "cache"
    if not root.is_dir():
        return []
    found = [_measured(p, p.name.rsplit("-", 1)[0]) for p in root.iterdir() if p.is_dir() and p.name not in FIXED]
    if (root / "decoded").is_dir():  # not the packs being written (".name.pid.tmp")
        found += [_measured(p, "decoded images") for p in (root / "decoded").iterdir()
                  if p.is_dir() and not p.name.startswith(".")]
    if (root / "results").is_dir():
        found.append(_measured(root / "results", "cache records"))
    return sorted(found, key=lambda e: e.newest)


def older_than(found: list[Entry], days: float | None, now: float | None = None) -> list[Entry]:
    """The entries whose newest file is older than `days` (all when None)."""
    now = time.time() if now is None else now
    return found if days is None else [e for e in found if e.age_days(now) > days]


def prune(chosen: list[Entry], root: Path | None = None) -> int:
    """Remove `chosen`, and with them every cache record and the generation (the module's docstring) -> bytes freed."""
    root = root or settings.HOME / "cache"
    if not chosen:
        return 0
    records = [e for e in entries(root) if e.kind == "cache records"]
    freed = 0
    for entry in {e.path: e for e in [*chosen, *records]}.values():
        shutil.rmtree(entry.path, ignore_errors=True)
        freed += entry.bytes
    (root / "generation").unlink(missing_ok=True)  # a new one, made by the next run: every old key is unreachable
    return freed
