"""Benchmark 3: the fan-out efficiency of `trainflow compare` (issue 19): the child runs' training seconds over
(wall seconds x runs in parallel). 1.0 would mean the command costs nothing besides its trainings, 2 at a time.

    .venv/bin/python -m bench.fanout [--shape bench|seeds] [--repeats 3] [--epochs E] [--before PATH]

The command, by --shape (the default cnn on digits, 2 trainings at a time: compare's default):
  bench  `trainflow compare --repeats 4 --vary optimizer.name=sgd,adam --set training.epochs=20 --json`: 8 trainings
  seeds  `trainflow compare --vary training.seed=0,1,2,3,4,5 --set training.epochs=15 --json`: 6 trainings
`--before PATH` also measures another checkout (e.g. a git worktree of an older commit), alternating with this one
round by round so that the machine's drift (10-30% here) touches both alike; a checkout whose compare has no
--repeats runs the bench shape's 8 trainings as `--vary optimizer.name=sgd,adam --vary training.seed=0,1,2,3`.

Each checkout gets a fresh TRAINFLOW_HOME in a temporary folder. Its first run there is "cold" (stores created,
data ingested, the project's warm process started); the table gives medians over `repeats` warm runs after it,
each a fork of the warm process once it has loaded (flows/warm.py). A child's training seconds are the sum of its
per-epoch `epoch_seconds` metrics in MLflow (what `train_seconds` records). One more warm run per checkout is
instrumented (bench/timeline.py: Prefect task-run times, MLflow calls timed) to say where the time outside
training goes: it runs in a process of its own (its timers are set up in that process), so its start-up is a
command's without the warm process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, table

ROOT = Path(__file__).resolve().parents[1]
TIMELINE = Path(__file__).with_name("timeline.py")
PARALLEL = 2  # compare's default max_parallel


SHAPES = {"bench": (["--repeats", "4", "--vary", "optimizer.name=sgd,adam"], 20),
          "seeds": (["--vary", "training.seed=0,1,2,3,4,5"], 15)}


def command(checkout: Path, shape: str, epochs: int) -> list[str]:
    """The compare's arguments in `checkout`; for the bench shape, --repeats 4 where it has them, else the seeds as
    a second --vary."""
    varies = SHAPES[shape][0]
    if shape == "bench" and "--repeats" not in (checkout / "flows" / "commands.py").read_text():
        varies = ["--vary", "training.seed=0,1,2,3", "--vary", "optimizer.name=sgd,adam"]
    return ["compare", *varies, "--set", f"training.epochs={epochs}", "--json"]


class Checkout:
    """One checkout's project: its own temporary home, its runs."""

    def __init__(self, path: Path, shape: str, epochs: int, tmp: Path):
        self.path, self.args = path, command(path, shape, epochs)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        self.env |= {"TRAINFLOW_HOME": str(tmp / "home"), "PYTHONPATH": str(path)}
        self.folder = tmp
        self.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True,
                                     text=True).stdout.strip()

    def run(self) -> dict:
        """One plain run as a process: {wall, train (sum over children), children, summary}."""
        start = time.time()
        out = subprocess.run([sys.executable, "-m", "cli", *self.args], env=self.env, cwd=self.path,
                             capture_output=True, text=True)
        wall = time.time() - start
        if out.returncode != 0:
            sys.exit(f"compare in {self.path} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        return {"wall": wall, "summary": summary, **self.training(summary["children"])}

    def settle(self, timeout: float = 180) -> None:
        """After the cold run: until the project's warm process (if this checkout has one) has loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-m", "cli", "status"], env=self.env, cwd=self.path,
                                 capture_output=True, text=True).stdout
            if "warm     loading" not in out:
                return
            time.sleep(0.5)

    def down(self) -> None:
        subprocess.run([sys.executable, "-m", "cli", "down"], env=self.env, cwd=self.path,
                       capture_output=True)

    def training(self, children: list[str]) -> dict:
        """Training seconds of each child run: the sum of its epoch_seconds metric history."""
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{self.folder / 'home' / 'mlflow.db'}")
        each = [sum(m.value for m in client.get_metric_history(c, "epoch_seconds")) for c in children]
        return {"train": sum(each), "each": each}

    def instrumented(self) -> dict:
        """One run under bench/timeline.py: its timeline and its children's training seconds."""
        path = self.folder / "timeline.json"
        start = time.time()
        out = subprocess.run([sys.executable, str(TIMELINE), str(path), *self.args],
                             env={**self.env, "BENCH_T0": str(start)}, cwd=self.path, capture_output=True, text=True)
        exited = time.time()
        if out.returncode != 0:
            sys.exit(f"bench/timeline.py in {self.path} failed:\n{out.stderr[-3000:]}")
        t = json.loads(path.read_text())
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        t["exited"] = exited
        return t | self.training(summary["children"])


def efficiency(train: float, wall: float) -> float:
    return train / (wall * PARALLEL)


def parts(t: dict) -> dict[str, float]:
    """Seconds of each part of one instrumented compare."""
    children = [x for x in t["tasks"] if x["name"] == "variant"]
    first, last = min(x["start"] for x in children), max(x["end"] for x in children)
    inside = sum(x["end"] - x["start"] for x in children)
    after = {name: sum(x["end"] - x["start"] for x in t["tasks"] if x["name"] == name)
             for name in ("register", "compare_report")}
    wall = t["exited"] - t["t0"] - (t["queried"] - t["done"])
    return {
        "wall": wall,
        "efficiency (this run)": efficiency(t["train"], wall),
        "start-up (interpreter, imports, Prefect API, flow run created)": t["flow"]["start"] - t["t0"],
        "before the children (start-run, ingest, split, normalize, record-data)": first - t["flow"]["start"],
        "the children's window (first start to last end)": last - first,
        "  its ideal: child training / 2": t["train"] / PARALLEL,
        "  child task runs outside training, summed over the children": inside - t["train"],
        "  of which MLflow calls, summed over threads (whole command)": t["spent"]["mlflow"],
        "after the children (register, report)": t["flow"]["end"] - last,
        "  register task": after["register"],
        "  compare_report task": after["compare_report"],
        "  of which model logging (export, signature, files)": t["spent"]["model"],
        "after the flow (summary, exit)": (t["done"] - t["flow"]["end"]) + (t["exited"] - t["queried"]),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="bench", help="which compare (see above)")
    p.add_argument("--repeats", type=int, default=3, help="warm rounds per checkout (median reported)")
    p.add_argument("--epochs", type=int, help="training.epochs of every child run (bench: 20, seeds: 15)")
    p.add_argument("--before", type=Path, help="another checkout to measure alongside this one")
    args = p.parse_args(argv)
    args.epochs = args.epochs or SHAPES[args.shape][1]
    paths = [ROOT, *([args.before.resolve()] if args.before else [])]
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        checkouts = []
        for i, path in enumerate(paths):
            (Path(tmp) / str(i)).mkdir()
            checkouts.append(Checkout(path, args.shape, args.epochs, Path(tmp) / str(i)))
        cold, warm = {}, {c.commit: [] for c in checkouts}
        for c in checkouts:
            print(f"{c.commit}: cold run ({' '.join(c.args)}) ...", file=sys.stderr, flush=True)
            cold[c.commit] = c.run()
            c.settle()
        for r in range(args.repeats):
            for c in (checkouts if r % 2 == 0 else checkouts[::-1]):
                warm[c.commit].append(run := c.run())
                print(f"{c.commit} round {r + 1}: wall {run['wall']:.1f} s, training {run['train']:.1f} s, "
                      f"efficiency {efficiency(run['train'], run['wall']):.2f}", file=sys.stderr, flush=True)
        timelines = {c.commit: parts(c.instrumented()) for c in checkouts}
        for c in checkouts:
            c.down()
    trainings = len(cold[checkouts[0].commit]["each"])
    print(f"## Fan-out efficiency: trainflow compare, {trainings} trainings of {args.epochs} epochs, {PARALLEL} at a "
          "time\n\n"
          f"{machine()}; {time.strftime('%Y-%m-%d')}\n")
    rows = []
    for c in checkouts:
        runs = warm[c.commit]
        rows.append([c.commit, " ".join(c.args[:-1]), cold[c.commit]["wall"],
                     statistics.median(x["wall"] for x in runs), statistics.median(x["train"] for x in runs),
                     statistics.median(efficiency(x["train"], x["wall"]) for x in runs), len(runs)])
    print(table(["commit", "command", "cold wall", "wall", "child training", "efficiency", "rounds"], rows))
    print()
    if len(checkouts) == 2:  # the same work, back to back: the ratio drift touches least
        ratios = [a["wall"] / b["wall"] for a, b in zip(*warm.values(), strict=True)]
        print(f"wall {checkouts[0].commit} / {checkouts[1].commit}, median of the per-round ratios: "
              f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})\n")
    names = list(next(iter(timelines.values())))
    print(table(["one instrumented warm run, seconds", *timelines], [[n, *(t[n] for t in timelines.values())]
                                                                     for n in names]))


if __name__ == "__main__":
    main()
