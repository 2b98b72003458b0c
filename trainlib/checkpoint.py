"""Checkpoint files: written atomically with torch.save, read only with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainlib.errors import DataError


def save_checkpoint(path: str | Path, **state) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path`; a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (no arbitrary pickles) onto the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # torch raises pickle/unpickling/runtime errors for foreign or broken files
        raise DataError(f"cannot read checkpoint {path}: {exc}") from exc
