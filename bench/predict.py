"""Benchmark 8: batch scoring and serving (issue 21). `trainflow predict` as a process on generated flat folders of
28x28 grayscale PNG digits (the embedded digits, upscaled, with noise), its resident memory sampled every 20 ms
from /proc (the trainflow process alone: bench/memory.py's sampler), its rows/s as the scoring task measured them
and over the whole command, and the two halves of scoring apart (decoding, the forward pass); then
`trainflow serve-model`: the latency of one POST of 100 rows, for the default cnn
on the 8x8 digits and for the 28x28 one.

    .venv/bin/python -m bench.predict [--sizes 10000,100000] [--requests 20]

The model: configs/imagefolder.yaml's cnn at 28x28 (3 epochs on the bundled PNG digits), registered in a fresh
TRAINFLOW_HOME. Memory that stays flat from the small folder to the large one is what "does not load the folder
whole" means; the table says it with numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import header, table
from bench.memory import rss
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))
SIDE = 28


def _write(args: tuple[str, int, int]) -> None:
    from sklearn.datasets import load_digits

    root, start, stop = args
    x = load_digits().images
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        big = np.kron(x[i % len(x)], np.ones((4, 4)))[2:30, 2:30] * 15 + rng.normal(0, 8, (SIDE, SIDE))
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(Path(root) / f"{i:06d}.png")


def flat_folder(root: Path, images: int) -> Path:
    """`images` PNGs in one flat folder (made once: kept between runs of the benchmark)."""
    if root.is_dir() and len(list(root.iterdir())) == images:
        return root
    root.mkdir(parents=True, exist_ok=True)
    step = 2000
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write, [(str(root), s, min(s + step, images)) for s in range(0, images, step)]))
    return root


def measured(cmd: list[str], env: dict) -> tuple[dict, float, float]:
    """(the command's JSON, its peak RSS in MiB, wall seconds)."""
    start, peak = time.time(), [0]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL)

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], rss(proc.pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=sample)
        watcher.start()
        code = proc.wait()
        watcher.join()
        out.seek(0)
        text = out.read()
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code})")
    return json.loads(text), peak[0] / 2**20, time.time() - start


def serving_latency(env: dict, requests: int, model: str, side: int) -> list[float]:
    """Seconds per POST of 100 raw rows of side x side pixels to `trainflow serve-model`, after one unmeasured
    request."""
    port = free_port()
    server = subprocess.Popen([TRAINFLOW, "serve-model", model, "--port", str(port)],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()  # the ready line: printed once its own /health answered
        rows = np.random.default_rng(0).integers(0, 17, (100, 1, side, side)).astype(np.float32)
        body = json.dumps({"inputs": rows.tolist()}).encode()
        times = []
        for i in range(requests + 1):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})
            start = time.perf_counter()
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            if i:
                times.append(time.perf_counter() - start)
            assert len(answer["predictions"]) == 100
        return times
    finally:
        server.send_signal(2)
        server.wait(30)


def components(folder: Path) -> list[list]:
    """Rows/s of the two halves of scoring, apart, in this process: decoding and resizing the folder's PNGs (the
    folder reader, 4 threads, batches of 512) and the cnn's forward pass on batches of 512 (torch's threads)."""
    import torch

    from trainlib import models
    from trainlib.data.inputs import FolderReader
    from trainlib.device import configure_threads
    from trainlib.scoring import InputSpec

    configure_threads()
    spec = InputSpec([str(i) for i in range(10)], [1, SIDE, SIDE], True, [], 255.0, [100.0], [50.0])
    start, rows = time.perf_counter(), 0
    for batch in FolderReader(folder, spec).batches(512):
        rows += len(batch.ids)
    decode = rows / (time.perf_counter() - start)
    net, x = models.build("cnn", [1, SIDE, SIDE], 10).eval(), torch.rand(512, 1, SIDE, SIDE) * 255
    with torch.no_grad():
        net(x)
        start = time.perf_counter()
        for _ in range(10):
            net(x)
    forward = 10 * 512 / (time.perf_counter() - start)
    return [["decode and resize (4 threads)", f"{decode:,.0f}"], ["cnn forward pass", f"{forward:,.0f}"]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000", help="folder sizes, comma-separated")
    p.add_argument("--requests", type=int, default=20, help="measured serving requests")
    p.add_argument("--folders", default=str(Path(tempfile.gettempdir()) / "trainflow-bench-predict"),
                   help="where the generated folders are kept")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env["TRAINFLOW_HOME"] = str(Path(tmp) / "home")
        subprocess.run([TRAINFLOW, "run", "--config", "configs/imagefolder.yaml", "--name", "bench-predict",
                        "--set", f"data.image_size=[{SIDE},{SIDE}]", "--set", "training.epochs=3", "--set",
                        "register.min_test_accuracy=0", "--json"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in sizes:
            folder = flat_folder(Path(args.folders) / f"flat-{n}", n)
            out, peak, wall = measured([TRAINFLOW, "predict", "--model", "models:/bench-predict@champion",
                                        "--data", str(folder), "--out", str(Path(tmp) / f"{n}.parquet"),
                                        "--json"], env)
            assert out["rows"] == n, out
            rows.append([f"{n:,}", f"{peak:,.0f}", f"{out['metrics']['rows_per_second']:,.0f}",
                         f"{n / wall:,.0f}", f"{wall:.1f}"])
        subprocess.run([TRAINFLOW, "run", "--set", "training.epochs=5", "--json"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the default cnn on the 8x8 digits
        latency = {"the default cnn on 8x8 digits (digits-cnn)": serving_latency(env, args.requests,
                                                                                "models:/digits-cnn@champion", 8),
                   f"the cnn above, {SIDE}x{SIDE}": serving_latency(env, args.requests,
                                                                    "models:/bench-predict@champion", SIDE)}
    parts = components(Path(args.folders) / f"flat-{sizes[0]}")
    print(header("Batch scoring of a flat folder of 28x28 PNGs (trainflow predict, cnn)"))
    print(table(["images", "peak RSS MiB", "rows/s (scoring task)", "rows/s (whole command)", "wall s"], rows))
    print(f"\nthe two halves apart, in one process ({sizes[0]:,} images):")
    print(table(["part", "rows/s"], parts))
    print("\nserve-model: one POST of 100 raw rows (JSON), milliseconds over "
          f"{args.requests} requests after a first unmeasured one")
    rows = [[name, *(f"{f(t) * 1000:.1f}" for f in (statistics.median, min, max))] for name, t in latency.items()]
    print(table(["model", "median", "min", "max"], rows))


if __name__ == "__main__":
    main()
