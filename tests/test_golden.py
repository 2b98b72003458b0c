"""Golden numbers: the default pipeline (cnn on digits, adam, standardize; CPU, fp32) trained for 3 epochs ends
with the per-epoch losses and accuracies recorded in tests/golden/, so that a silent change in the maths (the
model, its initialization, the split, the normalization, the optimizer, the batch order, the loss) fails loudly.

The tolerance is relative 1e-5: runs repeat exactly, and torch threads 1, 2 and 4 give the same numbers within
2e-7 relative (the order of float sums changes with the threads); a real change in the maths moves them by far
more (standardizing with the sample std instead of the population std, a factor 1.000006, moves the first
train loss by 4e-5). The test pins one thread all the same (training.threads, which changes no maths): the
numbers then do not depend on the machine's cores, and one thread is many times faster on shared CPUs.

To re-record on purpose (after a change that is meant to change the numbers), run
    TRAINFLOW_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
and commit tests/golden/default_cnn_digits_3_epochs.json with the reason in the message.
"""

import json
import os
import platform
from pathlib import Path

import pytest
import torch

from trainlib import recipe
from trainlib.config import load_config

GOLDEN = Path(__file__).parent / "golden" / "default_cnn_digits_3_epochs.json"
KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
REL = 1e-5
RECORD = "TRAINFLOW_RECORD_GOLDEN"


def _train_default_for_3_epochs() -> list[dict[str, float]]:
    # all else the default config
    cfg = load_config(None, ["training.epochs=3", "training.device=cpu", "training.threads=1"])
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    _, fit = recipe.train(cfg, ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize))
    return [{k: h[k] for k in ("epoch", *KEYS)} for h in fit.history]


def test_the_default_cnn_on_digits_ends_with_the_recorded_losses():
    history = _train_default_for_3_epochs()
    if os.environ.get(RECORD) == "1":
        GOLDEN.write_text(json.dumps({"recorded_with": {"torch": torch.__version__, "machine": platform.machine()},
                                      "history": history}, indent=2) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    how = (f"recorded with {recorded['recorded_with']}, now torch {torch.__version__}; if the change is meant, "
           f"re-record with {RECORD}=1 (see this file's docstring)")
    assert [h["epoch"] for h in history] == [h["epoch"] for h in recorded["history"]] == [1, 2, 3], how
    for got, want in zip(history, recorded["history"], strict=True):
        for key in KEYS:
            assert got[key] == pytest.approx(want[key], rel=REL, abs=0), f"epoch {got['epoch']} {key}: {how}"
