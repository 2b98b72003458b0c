"""Benchmark 5: scaling out on this machine. `trainflow ensemble --method bagging --members 8` with the thread
runner against a Dask LocalCluster (`--runner dask`), both two members at a time; and `trainflow run` with
training.devices 1 against 2 (data-parallel processes on the gloo backend).

    .venv/bin/python -m bench.scaleout [--repeats 2] [--members 8]

Every command runs as a process in a fresh TRAINFLOW_HOME after one unmeasured warm-up there (databases
created, data ingested and cached); runs of the two sides alternate. Wall times include everything the
command does: start-up, data, training, the ensemble's combination and registration.
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

from bench.common import header, table

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))


def _timed(args: list[str], home: Path) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    start = time.time()
    out = subprocess.run([TRAINFLOW, *args, "--json"], env=env | {"TRAINFLOW_HOME": str(home)}, cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.time() - start
    if out.returncode != 0:
        sys.exit(f"trainflow {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout)


def _compare(sides: dict[str, list[str]], repeats: int) -> dict[str, list[tuple[float, dict]]]:
    """name -> [(wall seconds, summary)] for each side, alternating, after a warm-up of each."""
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        homes = {name: Path(tmp) / name for name in sides}
        for name, args in sides.items():
            _timed(args, homes[name])
        results: dict[str, list] = {name: [] for name in sides}
        order = list(sides)
        for i in range(repeats):
            for name in order if i % 2 == 0 else order[::-1]:
                results[name].append(_timed(sides[name], homes[name]))
        return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--members", type=int, default=8)
    args = p.parse_args()
    print(header("5. Scaling out: Dask runner and data-parallel training"))
    bagging = ["ensemble", "--method", "bagging", "--members", str(args.members), "--max-parallel", "2"]
    runs = _compare({"thread": bagging, "dask": [*bagging, "--runner", "dask"]}, args.repeats)
    rows = []
    for name, found in runs.items():
        walls = [w for w, _ in found]
        member_s = [statistics.fmean(m["seconds"] for m in s["members"]) for _, s in found]
        rows.append([f"bagging x{args.members}, --runner {name}", statistics.median(walls), min(walls),
                     statistics.median(member_s), found[-1][1]["metrics"]["test_accuracy"]])
    print(table(["command", "wall s (median)", "wall s (min)", "mean member s", "test acc"], rows))
    print()
    run = ["run", "--set", "training.early_stopping.enabled=false"]
    runs = _compare({"1": [*run, "--set", "training.devices=1"], "2": [*run, "--set", "training.devices=2"]},
                    args.repeats)
    rows = [[f"trainflow run, training.devices={name}", statistics.median(w for w, _ in found),
             statistics.median(s["metrics"]["train_seconds"] for _, s in found),
             found[-1][1]["metrics"]["test_accuracy"]] for name, found in runs.items()]
    print(table(["command (cnn, digits, 30 epochs)", "wall s (median)", "train s (median)", "test acc"], rows))


if __name__ == "__main__":
    main()
