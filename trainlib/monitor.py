"""Metrics that early stopping and the plateau schedule may watch, and what counts as better."""

from __future__ import annotations

from trainlib.registry import Registry

# name -> direction in which the metric improves
MONITORS: Registry[str] = Registry("monitored metric", {"val_loss": "min", "val_accuracy": "max"})


def improved(value: float, best: float | None, mode: str, delta: float = 0.0, relative: bool = False) -> bool:
    """Whether `value` beats `best` by more than `delta` (absolute, or a fraction of best if `relative`)."""
    if best is None:
        return True
    margin = abs(best) * delta if relative else delta
    return value < best - margin if mode == "min" else value > best + margin
