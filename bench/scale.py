"""Benchmark 9: cost against the number of images, in memory and streamed.

Class-per-folder trees of 28x28 grayscale PNGs (the bundled digits, enlarged, shifted, with noise; made once and
kept under --folders) of 5,000 to 200,000 images. For each size and mode, `trainflow run` as a process with a fresh
TRAINFLOW_HOME (nothing cached): its peak RSS (the trainflow process alone, sampled from /proc every 20 ms; the
DataLoader workers are processes of their own), wall seconds, and seconds per epoch as the run recorded them; then
ingest alone timed in a process of its own, into an empty decoded-image cache and again.

    .venv/bin/python -m bench.scale [--sizes 5000,20000,50000,200000] [--epochs 2] [--repeats 3] [--plot FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import commit, header, table
from bench.predict import measured

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))
SIDE = 28
MODES = {"in memory": "false", "streamed": "true"}


def _write(args: tuple[str, int, int]) -> None:
    from sklearn.datasets import load_digits

    root, start, stop = args
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        k = i % len(x)
        img = np.zeros((SIDE, SIDE))
        dy, dx = rng.integers(0, 5, 2)
        img[dy:dy + 24, dx:dx + 24] = np.kron(x[k].reshape(8, 8), np.ones((3, 3))) * 15
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(Path(root) / str(y[k]) / f"{i:07d}.png")


def class_folder(root: Path, images: int) -> Path:
    """`images` PNGs in ten class folders (made once: kept between runs of the benchmark)."""
    done = root / ".complete"
    if done.exists():
        return root
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_write, [(str(root), s, min(s + step, images)) for s in range(0, images, step)]))
    done.touch()
    return root


INGEST = """
import sys, tempfile, time
from trainlib.data.sources import load_imagefolder
if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):
            t = time.perf_counter()
            load_imagefolder(sys.argv[1], ({side}, {side}), 1, stream=sys.argv[2] == "true", cache_dir=cache)
            print(time.perf_counter() - t)
"""


def ingest_seconds(folder: Path, stream: str) -> tuple[float, float]:
    """Seconds to ingest the folder as the ingest task does (list, hash every file, decode into the cache; in memory,
    read the decoded images), into an empty cache and then again, in a process of its own (one that imports its
    main module, as the decoding workers re-import it)."""
    script = Path(tempfile.gettempdir()) / "bench_scale_ingest.py"
    script.write_text(INGEST.format(side=SIDE))
    out = subprocess.run([sys.executable, str(script), str(folder), stream], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    first, again = (float(s) for s in out.stdout.split()[-2:])
    return first, again


def run(folder: Path, stream: str, epochs: int, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["TRAINFLOW_HOME"] = str(home)
    out, peak, wall = measured([TRAINFLOW, "run", "--name", "bench-scale", "--json",
                                "--set", "data.source=imagefolder", "--set", f"data.path={folder}",
                                "--set", f"data.image_size=[{SIDE},{SIDE}]", "--set", "data.channels=1",
                                "--set", f"data.stream={stream}", "--set", f"training.epochs={epochs}",
                                "--set", "register.enabled=false"], env)
    m = out["metrics"]
    return {"peak": peak, "wall": wall, "epoch": m["train_seconds"] / m["stopped_epoch"],
            "accuracy": m["test_accuracy"]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, sec) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, rows in results.items():
        n = [r["images"] for r in rows]
        mem.plot(n, [r["peak"] for r in rows], "o-", label=mode)
        sec.plot(n, [r["epoch"] for r in rows], "o-", label=mode)
    first, n = results["in memory"][0], [r["images"] for r in results["in memory"]]
    mem.plot(n, [first["peak"] + 2 * (i - first["images"]) * SIDE * SIDE / 2**20 for i in n], "k--", lw=1,
             label="in memory, bound: + 2x the decoded bytes added")
    mem.set(xscale="log", xlabel="images", ylabel="peak RSS, trainflow process (MiB)", ylim=(0, None))
    sec.set(xscale="log", yscale="log", xlabel="images", ylabel="seconds per epoch")
    for ax in (mem, sec):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"trainflow run on 28x28 image folders ({commit()})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="5000,20000,50000,200000", help="images per folder, comma-separated")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="runs per size and mode (peak RSS varies by 5-10%% "
                   "between identical runs); the table gives medians")
    p.add_argument("--folders", default=str(Path(tempfile.gettempdir()) / "trainflow-bench-scale"),
                   help="where the generated folders are kept")
    p.add_argument("--plot", default=None, help="write the plot of memory and time against images here")
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        started = time.time()
        folder = class_folder(Path(args.folders) / f"classes-{n}", n)
        print(f"{n:,} images ready ({time.time() - started:.0f} s)", file=sys.stderr)
        rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for i in range(args.repeats):  # the modes alternate within a round: the machine's drift touches both alike
            for mode, stream in (list(MODES.items()) if i % 2 == 0 else list(MODES.items())[::-1]):
                with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
                    r = run(folder, stream, args.epochs, Path(tmp) / "home")
                r |= dict(zip(("ingest", "again"), ingest_seconds(folder, stream), strict=True), images=n)
                rounds[mode].append(r)
                print(f"  {mode}: {r}", file=sys.stderr)
        for mode in MODES:
            r = {k: statistics.median(x[k] for x in rounds[mode]) for k in rounds[mode][0]}
            r["peaks"] = [x["peak"] for x in rounds[mode]]
            results[mode].append(r)
            rows.append([f"{n:,}", mode, f"{r['peak']:,.0f}", " / ".join(f"{p:,.0f}" for p in r["peaks"]),
                         f"{r['ingest']:.1f}", f"{r['again']:.1f}", f"{r['epoch']:.1f}",
                         f"{n * 0.7 / r['epoch']:,.0f}", f"{r['wall']:.0f}", f"{r['accuracy']:.3f}"])
    print(header(f"trainflow run on class folders of {SIDE}x{SIDE} PNGs, {args.epochs} epochs, "
                 f"medians of {args.repeats} runs"))
    print(table(["images", "mode", "peak RSS MiB", "each run's", "ingest s", "ingest again s", "s per epoch",
                 "train images/s", "wall s", "test accuracy"], rows))
    for n_mem, n_str in zip(results["in memory"], results["streamed"], strict=True):
        print(f"{int(n_mem['images']):,}: streamed/in-memory training speed "
              f"{n_mem['epoch'] / n_str['epoch']:.2f}x")
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
