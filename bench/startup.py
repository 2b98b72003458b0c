"""Benchmark: what a `trainflow` command costs beyond its work, as whole processes, against the hand-written script
(bench/handscript.py) training the same model for the same epochs. Each round runs both back to back, alternating
which goes first; the table gives medians and the median of the per-round ratios with a distribution-free 95%
interval (bench.common.median_interval), since this machine's speed drifts by 10-30 % from minute to minute.

    .venv/bin/python -m bench.startup [--rounds 9] [--only NAME]

The project is a fresh TRAINFLOW_HOME, made warm first (stores created, data cached, a model registered); no stack.
  nothing running  `trainflow run --no-register --set training.epochs=1` with no warm process: it runs in its own
                   process (and leaves a warm process behind, stopped before the next measurement)
  warm process     the same, with the project's warm process ready: the command is its fork (flows/warm.py)
  default run      `trainflow run` (30 epochs; early stopping on, as `make run`), warm process ready
Bad input is timed both ways, without a script to compare: an unknown registered transfer source, and a user's own
data with problems to name (a wine table with two text cells, a folder of 400 PNGs with two corrupt files: every
image decoded before the error, issue 38's <= 3 s), nothing cached for them.
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

from bench.common import commit, machine, median_interval, rounds, table

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))
ONE_EPOCH = ["run", "--no-register", "--set", "training.epochs=1"]
BAD = ["transfer", "--source", "models:/nothing@champion"]


def own_data(folder: Path) -> dict[str, list[str]]:
    """A wine table with two text cells and a folder of 400 PNG digits with two corrupt files, in `folder`: the
    commands that train on them (each fails, naming both problems)."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits, load_wine

    wine = load_wine(as_frame=True).frame.astype({"ash": object, "alcohol": object})
    wine.loc[16, "ash"], wine.loc[40, "alcohol"] = "n/a?", "x"
    wine.to_csv(folder / "wine.csv", index=False)
    x, y = load_digits(return_X_y=True)
    for i in range(400):
        (folder / "pics" / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i].reshape(8, 8) * 15).astype(np.uint8)).save(folder / "pics" / str(y[i]) / f"{i}.png")
    (folder / "pics" / "5" / "bad.png").write_bytes(b"not a png")
    (folder / "pics" / "2" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    assert pd.read_csv(folder / "wine.csv").shape == (178, 14)
    return {"a wine CSV, two text cells": ["run", "--set", "data.source=csv", "--set", f"data.path={folder}/wine.csv"],
            "400 PNGs, two corrupt": ["run", "--set", "data.source=imagefolder", "--set", f"data.path={folder}/pics",
                                      "--set", "data.cache=false"]}


class Project:
    def __init__(self, folder: Path):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
        self.env["TRAINFLOW_HOME"] = str(folder / ".trainflow")
        self.folder = folder

    def timed(self, args: list[str], expect: int = 0) -> float:
        start = time.perf_counter()
        out = subprocess.run([TRAINFLOW, *args], env=self.env, cwd=self.folder, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if out.returncode != expect:
            sys.exit(f"trainflow {' '.join(args)} exited {out.returncode}, not {expect}:\n{out.stderr[-3000:]}")
        return wall

    def down(self) -> None:
        subprocess.run([TRAINFLOW, "down"], env=self.env, cwd=self.folder, capture_output=True, check=True)

    def ready(self, timeout: float = 180) -> None:
        """Until the project's warm process has loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = subprocess.run([TRAINFLOW, "status"], env=self.env, cwd=self.folder, capture_output=True,
                                    text=True).stdout
            if "warm     ready" in status:
                return
            time.sleep(0.5)
        sys.exit("the warm process did not become ready")


def script(epochs: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.handscript", str(epochs)], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def row(name: str, ours: list[float], theirs: list[float], target: str) -> list:
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    low, high = median_interval(ratios)
    return [name, statistics.median(ours), statistics.median(theirs), statistics.median(ratios),
            f"[{low:.2f}, {high:.2f}]", target, len(ratios)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="measured rounds per row")
    p.add_argument("--only", choices=["nothing", "warm", "default", "bad"], action="append")
    args = p.parse_args(argv)
    wanted = args.only or ["nothing", "warm", "default", "bad"]
    rows, bad = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        project = Project(Path(tmp))
        hand_env = project.env | {"TRAINFLOW_HOME": str(Path(tmp) / "hand")}
        project.timed(["run", "--set", "training.epochs=1"])  # stores, data cache, a registered model
        try:
            if "nothing" in wanted:
                print("nothing running ...", file=sys.stderr, flush=True)

                def cold() -> float:
                    project.down()
                    wall = project.timed(ONE_EPOCH)
                    project.down()  # its warm process would load during the script's next run
                    return wall

                rows.append(row("`run --no-register --set training.epochs=1`, nothing running",
                                *rounds(cold, lambda: script(1, hand_env), args.rounds), "<= 1.4"))
            project.timed(ONE_EPOCH)
            project.ready()
            if "warm" in wanted:
                print("warm process ...", file=sys.stderr, flush=True)
                rows.append(row("the same, the project's warm process ready",
                                *rounds(lambda: project.timed(ONE_EPOCH), lambda: script(1, hand_env), args.rounds),
                                "<= 1.15"))
            if "default" in wanted:
                print("default run ...", file=sys.stderr, flush=True)
                rows.append(row("`run` (30 epochs), the warm process ready",
                                *rounds(lambda: project.timed(["run"]), lambda: script(30, hand_env), args.rounds),
                                "<= 1.2"))
            if "bad" in wanted:
                print("bad input ...", file=sys.stderr, flush=True)
                commands = {"unknown transfer source": BAD} | own_data(Path(tmp))
                for what, command in commands.items():
                    bad[f"{what}, warm process ready"] = [project.timed(command, expect=2) for _ in range(args.rounds)]
                for what, command in commands.items():
                    cold_bad = []
                    for _ in range(args.rounds):
                        project.down()
                        cold_bad.append(project.timed(command, expect=2))
                    bad[f"{what}, nothing running"] = cold_bad
        finally:
            project.down()
    print(f"## Start-up: whole processes against the hand-written script\n\n{machine()}; commit {commit()}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    if rows:
        print(table(["what", "trainflow s", "hand script s", "ratio", "95% interval", "target", "rounds"], rows))
        print()
    if bad:
        print(table(["bad input", "median s", "max s", "runs"],
                    [[k, statistics.median(v), max(v), len(v)] for k, v in bad.items()]))
    print(json.dumps({"rows": rows, "bad": bad}), file=sys.stderr)


if __name__ == "__main__":
    main()
