"""Benchmark 2: what the pipeline costs beyond training. `trainflow run` (the default: cnn on digits, 30
epochs) as a process, against a hand-written script training the same model for the same epochs, with
the ephemeral (temporary) Prefect API and with running Prefect and MLflow servers (`trainflow up`).

    .venv/bin/python -m bench.overhead [--repeats 3]

Each mode uses a fresh TRAINFLOW_HOME in a temporary folder. The first run there is "cold" (databases
created, data ingested); the table gives the median of `repeats` warm runs after it. One more warm run is
instrumented (bench/timeline.py) to split the wall time into its parts.
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
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = [str(Path(sys.executable).with_name("trainflow"))]


def _timed(cmd: list[str], env: dict) -> tuple[float, dict]:
    start = time.time()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def _timeline(env: dict, folder: Path) -> dict:
    path = folder / "timeline.json"
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "bench.timeline", str(path)], env={**env, "BENCH_T0": str(start)},
                         cwd=ROOT, capture_output=True, text=True)
    exited = time.time()
    if out.returncode != 0:
        sys.exit(f"bench.timeline failed:\n{out.stderr[-3000:]}")
    t = json.loads(path.read_text())
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    t["exited"], t["train_seconds"] = exited, summary["metrics"]["train_seconds"]
    return t


def parts(t: dict) -> dict[str, float]:
    """Seconds of each part of one instrumented run."""
    tasks = sum(x["end"] - x["start"] for x in t["tasks"])
    flow = t["flow"]["end"] - t["flow"]["start"]
    return {
        "start-up (interpreter, imports, Prefect API, flow run created)": t["flow"]["start"] - t["t0"],
        "training (engine, every epoch incl. validation)": t["train_seconds"],
        "tasks besides training": tasks - t["train_seconds"],
        "  of which MLflow logging (params, metrics, artifacts, registry)": t["spent"]["mlflow"],
        "  of which model logging (export, signature, files)": t["spent"]["model"],
        "Prefect orchestration between tasks": flow - tasks,
        "after the flow (summary, exit)": (t["done"] - t["flow"]["end"]) + (t["exited"] - t["queried"]),
        "wall": t["exited"] - t["t0"] - (t["queried"] - t["done"]),
    }


def measure(mode: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env["TRAINFLOW_HOME"] = str(Path(tmp) / "home")
        if mode == "server":
            up = [*TRAINFLOW, "up", "--prefect-port", str(free_port()), "--mlflow-port", str(free_port())]
            subprocess.run(up, env=env, cwd=ROOT, check=True, capture_output=True)
            for line in (Path(tmp) / "home" / "stack" / "env").read_text().splitlines():
                key, value = line.removeprefix("export ").split("=", 1)
                env[key] = value
        try:
            cold, _ = _timed([*TRAINFLOW, "run", "--json"], env)
            warm = [_timed([*TRAINFLOW, "run", "--json"], env) for _ in range(repeats)]
            timeline = _timeline(env, Path(tmp))
        finally:
            if mode == "server":
                subprocess.run([*TRAINFLOW, "down"], env=env, cwd=ROOT, capture_output=True)
    walls = [w for w, _ in warm]
    trains = [s["metrics"]["train_seconds"] for _, s in warm]
    return {"cold": cold, "wall": statistics.median(walls), "train": statistics.median(trains),
            "epochs": warm[0][1]["metrics"]["stopped_epoch"], "parts": parts(timeline)}


def hand_script(epochs: int, repeats: int) -> tuple[float, float]:
    """(process wall, training seconds) of bench/handscript.py, medians."""
    runs = [_timed([sys.executable, "-m", "bench.handscript", str(epochs)], dict(os.environ)) for _ in range(repeats)]
    return statistics.median(w for w, _ in runs), statistics.median(s["train_seconds"] for _, s in runs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="warm runs per mode (median reported)")
    args = p.parse_args(argv)
    results = {}
    for mode in ("ephemeral", "server"):
        print(f"measuring trainflow run with the {mode} API ...", file=sys.stderr, flush=True)
        results[mode] = measure(mode, args.repeats)
    epochs = results["ephemeral"]["epochs"]
    hand_wall, hand_train = hand_script(epochs, args.repeats)
    rows = [["hand-written script (process)", "-", hand_wall, hand_train, hand_wall - hand_train, "-"]]
    for mode, r in results.items():
        rows.append([f"trainflow run, {mode} API", r["cold"], r["wall"], r["train"], r["wall"] - r["train"],
                     r["wall"] - hand_wall])
    print(header(f"Pipeline overhead: the default run ({epochs} epochs), seconds (warm: median of "
                 f"{args.repeats})"))
    print(table(["what", "cold wall", "warm wall", "training", "beyond training", "beyond the script"], rows))
    print()
    names = list(results["ephemeral"]["parts"])
    print(table(["one instrumented warm run", "ephemeral API", "server"],
                [[n, results["ephemeral"]["parts"][n], results["server"]["parts"][n]] for n in names]))


if __name__ == "__main__":
    main()
