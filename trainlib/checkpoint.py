"""Checkpoint files: written atomically with torch.save, read only with weights_only=True."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from trainlib.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` that replaces it when the block succeeds: readers (and concurrent
    writers of the same file) never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, **state) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path`; a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (no arbitrary pickles) onto the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # torch raises pickle/unpickling/runtime errors for foreign or broken files
        raise DataError(f"cannot read checkpoint {path}: {exc}") from exc
