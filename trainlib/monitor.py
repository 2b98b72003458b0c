"""Which way a metric improves, in one vocabulary (`higher`, `lower`) for early stopping, the plateau schedule,
tuning, comparisons and the technique study; and the metrics early stopping and the plateau schedule may watch."""

from __future__ import annotations

from trainlib.registry import Registry

HIGHER, LOWER = "higher", "lower"
# A run's metric is a split or a moment (test_, val_, best_val_, train_, ...) and a kind, its last word: the kind
# says which way is better. (The derived measures, trainlib/measures.py, each say their own.)
KINDS: Registry[str] = Registry("kind of metric", {
    "accuracy": HIGHER, "f1": HIGHER, "precision": HIGHER, "recall": HIGHER,
    "loss": LOWER, "seconds": LOWER, "epochs": LOWER, "ece": LOWER,
    "minute": HIGHER})  # test_accuracy_per_cpu_minute: more accuracy for each minute of CPU


def better(metric: str) -> str:
    """`higher` or `lower`: which way `metric` (test_accuracy, best_val_loss, train_seconds, ...) improves."""
    return KINDS[metric.rsplit("_", 1)[-1]]


# the validation metrics early stopping, the plateau schedule and tuning may watch
MONITORS: Registry[str] = Registry("monitored metric", {m: better(m) for m in ("val_loss", "val_accuracy")})


def improved(value: float, best: float | None, mode: str, delta: float = 0.0, relative: bool = False) -> bool:
    """Whether `value` beats `best` by more than `delta` (absolute, or a fraction of best if `relative`), where
    `mode` (higher, lower) is the better way."""
    if best is None:
        return True
    margin = abs(best) * delta if relative else delta
    return value < best - margin if mode == LOWER else value > best + margin
