"""Benchmark 4: peak memory of the default run. `trainflow run` as a process (ephemeral API, fresh
TRAINFLOW_HOME), its resident memory sampled every 20 ms from /proc: the trainflow process alone and with
its children (the temporary Prefect API server). On CUDA, the training's peak GPU memory too (trainlib's
in-memory pipeline, in this process).

    .venv/bin/python -m bench.memory
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import header, table

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out + [g for c in out for g in children(c)]


def peak_rss(cmd: list[str], env: dict) -> tuple[float, float, float]:
    """(peak RSS of the process, peak RSS of it and its children together, wall seconds)."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = [0, 0]

    def sample():
        while proc.poll() is None:
            own = rss(proc.pid)
            peaks[0] = max(peaks[0], own)
            peaks[1] = max(peaks[1], own + sum(rss(c) for c in children(proc.pid)))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample)
    watcher.start()
    code = proc.wait()
    watcher.join()
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code})")
    return peaks[0] / 2**20, peaks[1] / 2**20, time.time() - start


def gpu_peak() -> float | None:
    """Peak GPU memory (MiB) allocated while trainlib runs the default config in memory (CUDA only)."""
    if not torch.cuda.is_available():
        return None
    from trainlib import recipe
    from trainlib.config import PipelineConfig

    torch.cuda.reset_peak_memory_stats()
    recipe.run(PipelineConfig())
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    trainflow = str(Path(sys.executable).with_name("trainflow"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env["TRAINFLOW_HOME"] = str(Path(tmp) / "home")
        for label in ("first run (fresh TRAINFLOW_HOME)", "second run"):
            own, tree, wall = peak_rss([trainflow, "run", "--json"], env)
            rows.append([f"trainflow run, {label}", f"{own:,.0f}", f"{tree:,.0f}", wall])
    gpu = gpu_peak()
    print(header("Peak memory of the default run (MiB)"))
    print(table(["run", "peak RSS, trainflow process", "peak RSS, with the temporary API", "wall s"], rows))
    print(f"\npeak GPU memory allocated by training: {f'{gpu:,.0f} MiB' if gpu is not None else 'no GPU here'}")


if __name__ == "__main__":
    main()
