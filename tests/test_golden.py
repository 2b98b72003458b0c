"""Golden numbers: the default pipeline (cnn on digits, adam, standardize; CPU, fp32) trained for 3 epochs ends
with the per-epoch losses and accuracies recorded in tests/golden/, so that a silent change in the maths (the
model, its initialization, the split, the normalization, the optimizer, the batch order, the loss) fails loudly.

The tolerance is relative 1e-5: runs repeat exactly, and torch threads 1, 2 and 4 give the same numbers within
2e-7 relative (the order of float sums changes with the threads); a real change in the maths moves them by far
more (standardizing with the sample std instead of the population std, a factor 1.000006, moves the first
train loss by 4e-5). The training pins one thread all the same (training.threads, which changes no maths): the
numbers then do not depend on the machine's cores, and one thread is many times faster on shared CPUs.

The numbers also depend on the CPU's vector width: the kernels torch and oneDNN pick on an AVX-512 machine sum
in another order than on an AVX2-only one (epoch 1's train loss 1.3581607 against 1.3582419, relative 6e-5).
So the training runs in a process of its own with the kernels' instruction set pinned to AVX2, which every
machine this runs on has (ATEN_CPU_CAPABILITY for torch's own kernels, ONEDNN_MAX_CPU_ISA for the convolutions,
MKL_CBWR for MKL's): on an AVX-512 machine pinned this way, epoch 1 gives the AVX2-only machine's 1.3582419.

Pinned, epoch 1 repeats exactly across the CPUs measured (AVX2-only, an AMD EPYC with AVX-512, an Intel Xeon with
AVX-512: every number equal), and is compared at REL. The later epochs are not: on the Intel Xeon, epoch 2 parts from
the EPYC's recording (train loss relative 3e-5, val loss 6e-4; epoch 3: 6e-5 and 1.4e-3, the accuracies equal),
every run alike, from something the pins do not reach (MKL_CBWR=AUTO instead moves epoch 1 too). So epochs 2 and 3
are compared at LATER: the course of the training (a changed batch order, schedule or update after the first epoch
moves them by far more), and epoch 1 is the exact check.

To re-record on purpose (after a change that is meant to change the numbers), run
    TRAINFLOW_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
and commit tests/golden/default_cnn_digits_3_epochs.json with the reason in the message.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "default_cnn_digits_3_epochs.json"
KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
REL = 1e-5  # epoch 1
LATER = 1e-2  # epochs 2 and 3: losses relative; accuracies within this absolute share (val: 2 of 269 samples)
RECORD = "TRAINFLOW_RECORD_GOLDEN"
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}

TRAIN = """
import json, torch
from trainlib import recipe
from trainlib.config import load_config

cfg = load_config(None, ["training.epochs=3", "training.device=cpu", "training.threads=1"])  # all else the default
ds = recipe.ingest(cfg.data)
manifest = recipe.split(ds, cfg.split)
_, fit = recipe.train(cfg, ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize))
conv = torch.nn.Conv2d(1, 4, 3)  # large enough for oneDNN (a 4x4 input is not)
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):  # oneDNN names its instruction set
    conv(torch.zeros(2, 1, 8, 8))
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "history": fit.history}, default=float))
"""


def train_pinned(**pins: str) -> tuple[dict, str]:
    """3 epochs of the default config in a process with the kernels pinned as `pins` say (whatever this process was
    started with) -> (its capability and history, what it printed)."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED} | pins
    out = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_the_default_cnn_on_digits_ends_with_the_recorded_losses():
    trained, printed = train_pinned(**PINNED)
    assert trained["capability"] == "AVX2", f"torch's kernels are not pinned to AVX2: {trained['capability']}"
    assert "isa:Intel AVX2\n" in printed, "oneDNN's instruction set is not pinned to AVX2"
    history = [{k: h[k] for k in ("epoch", *KEYS)} for h in trained["history"]]
    if os.environ.get(RECORD) == "1":
        GOLDEN.write_text(json.dumps({"recorded_with": {"torch": torch.__version__, "machine": platform.machine(),
                                                        "pinned": PINNED}, "history": history}, indent=2) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    how = (f"recorded with {recorded['recorded_with']}, now torch {torch.__version__}; if the change is meant, "
           f"re-record with {RECORD}=1 (see this file's docstring)")
    assert [h["epoch"] for h in history] == [h["epoch"] for h in recorded["history"]] == [1, 2, 3], how
    for got, want in zip(history, recorded["history"], strict=True):
        for key in KEYS:
            close = pytest.approx(want[key], rel=REL, abs=0) if got["epoch"] == 1 else \
                pytest.approx(want[key], rel=LATER if "loss" in key else 0, abs=0 if "loss" in key else LATER)
            assert got[key] == close, f"epoch {got['epoch']} {key}: {how}"
