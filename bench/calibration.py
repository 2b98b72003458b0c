"""Calibration of the comparison procedure itself (trainlib/evidence.py, trainlib/inference.py): how often it
calls a difference where there is none, and how often it finds one of known size.

A/A: a baseline and treatments that are the same config, only their training seeds differ (a "technique" that
changes nothing but the randomness of initialization and batch order); repeat i of every arm is split with the
same seed (resplit, paired as `compare --repeats N --resplit` pairs them). Each comparison is judged as
`compare` judges it: paired t-tests, Holm over the treatments, equivalence within the margin. A false verdict
is a `better` or `worse`; the nominal rate is 5% per family. Known effects: the same A/A pairs with a constant
added to the treatment's test accuracy, so the true difference is that constant and the noise is the seeds'.

The sequential design (`compare --repeats auto:MAX`, trainlib/sequential.py) is judged on the same pool, look by
look, with the repeats each variant spent.

    .venv/bin/python -m bench.calibration        # [--comparisons 40] [--repeats 5] [--treatments 3] [--most 12]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from bench.common import header, table
from trainlib import evidence, inference, recipe, sequential
from trainlib.config import load_config

BASE = ["model.name=mlp", "training.epochs=5", "training.early_stopping.enabled=false"]
EFFECTS = (0.005, 0.01, 0.02, 0.04)
NULL_OFFSET = 500_000  # treatment t trains with training.seed + t * NULL_OFFSET


def accuracies(comparisons: int, repeats: int, arms: int, base: list[str] = BASE) -> np.ndarray:
    """Test accuracy [comparison, arm, repeat]: arm 0 the baseline, the others its A/A treatments."""
    out = np.zeros((comparisons, arms, repeats))
    for k in range(comparisons):
        for i in range(repeats):
            seed = 1000 * k + i
            for a in range(arms):
                cfg = load_config(None, [*base, f"split.seed={seed}", f"training.seed={seed + a * NULL_OFFSET}"])
                out[k, a, i] = recipe.run(cfg).evaluation.accuracy
    return out


def verdicts(pool: np.ndarray, repeats: int, effect: float = 0.0) -> list[list[str]]:
    """Each comparison's verdicts on test_accuracy over its first `repeats` repeats, `effect` added to the first
    treatment's accuracy."""
    out = []
    for k in range(pool.shape[0]):
        arms = pool[k, :, :repeats]
        pairs = {f"t{a}": (list(arms[a] + (effect if a == 1 else 0.0)), list(arms[0])) for a in range(1, len(arms))}
        out.append([c.verdict for c in evidence.contrasts(pairs, "test_accuracy")])
    return out


def sequential_verdicts(pool: np.ndarray, most: int, effect: float = 0.0) -> list[dict[str, tuple[str, int]]]:
    """Each comparison run as `--repeats auto:most` runs it: its treatments' (verdict, repeats spent), `effect`
    added to the first treatment's accuracy."""
    out = []
    for k in range(pool.shape[0]):
        arms = pool[k, :, :most]
        groups = {f"t{a}": [{"test_accuracy": float(x) + (effect if a == 1 else 0.0)} for x in arms[a]]
                  for a in range(len(arms))}
        open_, found, looks = [g for g in groups if g != "t0"], {}, sequential.looks(most)
        for i, look in enumerate(looks):
            for stop in sequential.judge(groups, "t0", open_, look, i == len(looks) - 1, ["test_accuracy"]):
                found[stop.label] = (stop.contrasts[0].verdict, stop.n)
            open_ = [g for g in open_ if g not in found]
            if not open_:
                break
        out.append(found)
    return out


def wilson(hits: int, n: int) -> str:
    diffs = [1.0] * hits + [-1.0] * (n - hits)
    p, low, high = inference.improvement(diffs)
    return f"{hits}/{n} = {p:.3f} [{low:.3f}, {high:.3f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--comparisons", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--treatments", type=int, default=3)
    p.add_argument("--most", type=int, default=0, help="also judge auto:MOST (pool: MOST repeats)")
    args = p.parse_args(argv)
    pool = accuracies(args.comparisons, max(args.repeats, args.most), args.treatments + 1)
    n, rows = args.comparisons, []
    for r in sorted({3, args.repeats}):
        found = verdicts(pool, r)
        false = sum(any(v in (evidence.BETTER, evidence.WORSE) for v in vs) for vs in found)
        single = sum(vs[0] in (evidence.BETTER, evidence.WORSE) for vs in found)
        equivalent = sum(vs[0] == evidence.EQUIVALENT for vs in found)
        rows.append([f"{r}", "A/A, one treatment", wilson(single, n), "false better/worse (nominal 0.05)"])
        rows.append([f"{r}", f"A/A, {args.treatments} treatments (Holm)", wilson(false, n),
                     "any false better/worse in the family (nominal 0.05)"])
        rows.append([f"{r}", "A/A, one treatment", wilson(equivalent, n), "equivalent (margin 0.01)"])
        for effect in EFFECTS:
            hits = sum(vs[0] == evidence.BETTER for vs in verdicts(pool, r, effect))
            rows.append([f"{r}", f"+{effect:g} accuracy", wilson(hits, n), "detected as better (with Holm)"])
    if args.most:
        rows += sequential_rows(pool, args.most, args.treatments)
    spread = np.std(pool[:, 1] - pool[:, 0], axis=1, ddof=1)
    print(header(f"Calibration of the verdicts: {n} comparisons of a baseline and {args.treatments} A/A treatments "
                 "(mlp on digits, 5 epochs, resplit)"))
    print(table(["repeats", "comparison", "rate [95% Wilson interval]", "what"], rows))
    print(f"\nsd of the paired differences (first treatment, all repeats): median {np.median(spread):.4f}; "
          f"{math.ceil(np.mean(pool) * 1000) / 1000:.3f} mean test accuracy")


def sequential_rows(pool: np.ndarray, most: int, treatments: int) -> list[list[str]]:
    """The sequential design's rows: false verdicts in A/A, detection of the known effects, repeats spent."""
    n, rows, wrong = pool.shape[0], [], (evidence.BETTER, evidence.WORSE)
    found = sequential_verdicts(pool, most)
    spent = np.mean([f["t1"][1] for f in found])
    rows.append([f"auto:{most}", "A/A, one treatment", wilson(sum(f["t1"][0] in wrong for f in found), n),
                 f"false better/worse (nominal 0.05); {spent:.1f} repeats spent on average"])
    rows.append([f"auto:{most}", f"A/A, {treatments} treatments (Holm)",
                 wilson(sum(any(v in wrong for v, _ in f.values()) for f in found), n),
                 "any false better/worse in the family (nominal 0.05)"])
    for effect in EFFECTS:
        found = sequential_verdicts(pool, most, effect)
        hits = sum(f["t1"][0] == evidence.BETTER for f in found)
        rows.append([f"auto:{most}", f"+{effect:g} accuracy", wilson(hits, n),
                     f"detected as better; {np.mean([f['t1'][1] for f in found]):.1f} repeats spent on average"])
    return rows


if __name__ == "__main__":
    main()
