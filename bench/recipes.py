"""Benchmark 7: the techniques of the reference recipes (issue 20): what each does to test accuracy with few labels,
and what it costs per epoch.

    .venv/bin/python -m bench.recipes [--seeds 3] [--epochs 40] [--rounds 3]

Accuracy: the default cnn on digits with 20 labels per class (split.shots=20, batches of 32, early stopping with
patience 10), each technique against the plain run, `seeds` paired repeats (repeat i: training.seed and split.seed
i, the same for every variant): mean test accuracy with its 95% interval, and the paired difference with its
interval (trainlib.evidence). SWA trains every epoch (early stopping off), so its baseline is the plain run with
early stopping off too. The LR finder row trains at `optimizer.lr: find` (the range test's suggestion) against the
default LR 0.001; the suggested LRs are listed.

Cost: seconds per epoch with each technique over the plain run's, one torch thread, median of the per-round ratios
of back-to-back runs (rounds alternate their order), on digits' 8x8 images (1,257 train samples, all labels) and on
1,024 generated 3x32x32 images, 3 epochs each; torch.compile's first epoch (the compilation) is left out and
reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import commit, machine, table
from trainlib import evidence, recipe
from trainlib.config import load_config
from trainlib.data import sources
from trainlib.device import configure_threads

FEW = ["split.shots=20", "training.batch_size=32", "training.early_stopping.patience=10", "training.device=cpu",
       "training.threads=1"]
NO_STOP = ["training.early_stopping.enabled=false"]
# label -> (its sets, the label of its baseline)
ACCURACY = {
    "plain": ([], None),
    "mixup 0.2": (["augment.mixup=0.2"], "plain"),
    "cutmix 1.0": (["augment.cutmix=1.0"], "plain"),
    "mixup + cutmix": (["augment.mixup=0.2", "augment.cutmix=1.0"], "plain"),
    "EMA 0.99": (["training.ema.decay=0.99"], "plain"),
    "TrivialAugmentWide": (["augment.policy=trivialaugment"], "plain"),
    "RandAugment 2 ops, bin 9": (["augment.policy=randaugment"], "plain"),
    "lr: find (range test)": (["optimizer.lr=find"], "plain"),
    "plain, no early stopping": (NO_STOP, None),
    "SWA from 0.75, lr 0.0005": ([*NO_STOP, "training.swa.start=0.75", "training.swa.lr=0.0005"],
                                 "plain, no early stopping"),
}
COST = {
    "plain": [],
    "mixup + cutmix": ["augment.mixup=0.2", "augment.cutmix=1.0"],
    "EMA 0.99": ["training.ema.decay=0.99"],
    "SWA (from epoch 2)": [*NO_STOP, "training.swa.start=2"],
    "TrivialAugmentWide": ["augment.policy=trivialaugment"],
    "RandAugment": ["augment.policy=randaugment"],
    "AutoAugment": ["augment.policy=autoaugment"],
    "AugMix": ["augment.policy=augmix"],
    "accumulate 4 x 16": ["training.batch_size=16", "training.accumulate=4"],
    "fp16 + scaler": ["training.precision=fp16"],
    "bf16": ["training.precision=bf16"],
    "compile": ["training.compile=true"],
}


def accuracy(seeds: int, epochs: int) -> None:
    scores: dict[str, list[float]] = {k: [] for k in ACCURACY}
    found: list[float] = []
    for seed in range(seeds):
        for label, (sets, _) in ACCURACY.items():
            cfg = load_config(None, [*FEW, f"training.epochs={epochs}", f"training.seed={seed}", f"split.seed={seed}",
                                     *sets])
            logger = _Found()
            ds = recipe.ingest(cfg.data)
            manifest = recipe.split(ds, cfg.split)
            norm = recipe.fit_normalizer(ds, manifest, cfg.normalize)
            model, _ = recipe.train(cfg, ds, manifest, norm, logger=logger)
            scores[label].append(recipe.test(cfg, model, ds, manifest).accuracy)
            found += logger.found
            print(f"seed {seed}: {label}: {scores[label][-1]:.4f}", flush=True)
    rows = []
    for label, (_, base) in ACCURACY.items():
        e = evidence.estimate(scores[label])
        row = [label, f"{e.mean:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}]"]
        if base:
            v = evidence.paired("test_accuracy", scores[label], scores[base])
            row += [base, f"{v.diff.mean:+.4f} [{v.diff.ci_low:+.4f}, {v.diff.ci_high:+.4f}]", v.verdict]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    print(f"\n## Test accuracy with 20 labels per class, {seeds} paired seeds, up to {epochs} epochs\n")
    print(table(["technique", "test accuracy [95% CI]", "against", "difference [95% CI]", "verdict"], rows))
    print(f"\nLRs the range test suggested (one per seed): {', '.join(f'{lr:.3g}' for lr in found)}")


class _Found:
    """A logger that keeps the LR the range test found (recipe.train logs it as found_lr)."""

    def __init__(self):
        self.found: list[float] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "found_lr" in metrics:
            self.found.append(metrics["found_lr"])


def _images(n: int = 1024) -> sources.Dataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=g)
    inputs = (torch.rand(n, 3, 32, 32, generator=g) * 255).round()
    return sources.Dataset(inputs, labels, [str(i) for i in range(10)], "generated-3x32x32", 255.0)


def _per_epoch(ds: sources.Dataset, sets: list[str]) -> tuple[float, float]:
    """(median seconds per epoch after the first, the first epoch's seconds) of 3 epochs of `sets` on `ds`."""
    cfg = load_config(None, ["training.epochs=3", "training.device=cpu", "training.threads=1",
                             "split.train=0.9", "split.val=0.05", "split.test=0.05", *sets])
    manifest = recipe.split(ds, cfg.split)
    _, fit = recipe.train(cfg, ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize))
    seconds = [h["epoch_seconds"] for h in fit.history]
    return statistics.median(seconds[1:]), seconds[0]


def cost(rounds: int) -> None:
    configure_threads(1)
    data = {"digits 1x8x8": recipe.ingest(load_config(None, []).data), "generated 3x32x32": _images()}
    rows, first_epochs = [], {}
    for label, sets in COST.items():
        row = [label]
        for name, ds in data.items():
            ratios, firsts, plains = [], [], []
            for r in range(rounds):
                pair = [("plain", []), (label, sets)] if r % 2 == 0 else [(label, sets), ("plain", [])]
                got = {k: _per_epoch(ds, s) for k, s in pair}
                ratios.append(got[label][0] / got["plain"][0])
                firsts.append(got[label][1])
                plains.append(got["plain"][0])
            row += [f"{statistics.median(plains):.3f}", f"{statistics.median(ratios):.2f}"]
            first_epochs[(label, name)] = statistics.median(firsts)
        rows.append(row)
        print(f"cost: {label}: {row[1:]}", flush=True)
    print(f"\n## Seconds per epoch, ratio to the plain run (1 thread, median of {rounds} back-to-back rounds)\n")
    header = ["technique"] + [f"{n}: {w}" for n in data for w in ("plain s/epoch", "ratio")]
    print(table(header, rows))
    print("\ntorch.compile's first epoch (the compilation, left out above): " +
          ", ".join(f"{first_epochs[('compile', n)]:.1f} s on {n}" for n in data))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["accuracy", "cost"], help="one part")
    args = p.parse_args(argv)
    print(f"{machine()}; commit {commit()}; {time.strftime('%Y-%m-%d')}", flush=True)
    if args.only != "cost":
        accuracy(args.seeds, args.epochs)
    if args.only != "accuracy":
        cost(args.rounds)


if __name__ == "__main__":
    main()
