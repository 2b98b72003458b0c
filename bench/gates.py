"""Calibration of the registry gate (tasks/registry/register.py decide): how often each gate promotes a model no
better than the alias holder (A/A: the same config, another training seed, on the same split) and how often it
promotes a real improvement (an mlp trained longer than the holder).

Each pair is scored on the same test samples, as the gate sees a new version of the same data: `delta` promotes
when the test accuracy beats the holder's by more than register.min_delta (0.001); `mcnemar` when McNemar's exact
one-sided test on the samples they disagree on gives p < register.alpha (0.05).

    .venv/bin/python -m bench.gates          # [--pairs 40]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.calibration import NULL_OFFSET, wilson
from bench.common import header, table
from tasks.registry.register import decide
from trainlib import recipe
from trainlib.config import load_config
from trainlib.sections import RegisterConfig

BASE = ["model.name=mlp", "training.early_stopping.enabled=false", "training.epochs=5"]
LONGER = "training.epochs=15"  # the real improvement: the same mlp trained three times as long


def correct(overrides: list[str]) -> np.ndarray:
    """Which test samples a model trained with `overrides` gets right."""
    ev = recipe.run(load_config(None, [*BASE, *overrides])).evaluation
    return ev.probabilities.argmax(1) == ev.labels


def promoted(new: np.ndarray, old: np.ndarray, gate: str) -> bool:
    b, c = int((new & ~old).sum()), int((~new & old).sum())
    register = RegisterConfig(min_test_accuracy=0.0, gate=gate)
    return decide(float(new.mean()), register, 1, float(old.mean()), (b, c, len(new))).passed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=40)
    n = p.parse_args(argv).pairs
    rows, counts = [], {}
    for k in range(n):
        split = f"split.seed={k}"
        holder = correct([split, f"training.seed={k}"])
        twin = correct([split, f"training.seed={k + NULL_OFFSET}"])
        longer = correct([split, f"training.seed={k + NULL_OFFSET}", LONGER])
        for gate in ("delta", "mcnemar"):
            counts[gate, "A/A"] = counts.get((gate, "A/A"), 0) + promoted(twin, holder, gate)
            counts[gate, "longer"] = counts.get((gate, "longer"), 0) + promoted(longer, holder, gate)
        counts["gain"] = counts.get("gain", 0.0) + float(longer.mean() - holder.mean()) / n
    for gate in ("delta", "mcnemar"):
        rows.append([gate, "A/A: the same config, another seed", wilson(counts[gate, "A/A"], n),
                     "promoted a model no better (false promotion)"])
        rows.append([gate, f"{LONGER} against 5 epochs", wilson(counts[gate, "longer"], n),
                     f"promoted the improvement (mean gain {counts['gain']:+.4f})"])
    print(header(f"Calibration of the registry gate: {n} pairs on digits' test split (mlp, 5 epochs)"))
    print(table(["gate", "challenger", "rate [95% Wilson interval]", "what"], rows))


if __name__ == "__main__":
    main()
