"""Benchmark 11: `trainflow serve-model` under load from this machine's loopback.

The default cnn (5 epochs on the 8x8 digits, registered in a fresh TRAINFLOW_HOME) served by `trainflow serve-model`;
concurrent clients (threads of this process, each with a keep-alive connection of its own) each send their requests
of 100 raw rows (JSON) one after another: 8 clients x 500 requests, then 32 x 100. Per round: latency percentiles,
throughput, errors (anything but a 200 with 100 predictions), and the server's resident memory sampled every 50 ms;
then 200 malformed bodies, after which a good request must still be answered as before. The clients run on the same
two CPUs as the server: the figures are the server's under that load, not a bound on what it could do alone.

    .venv/bin/python -m bench.serving [--rounds 8x500,32x100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import header, table
from bench.memory import rss
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))


def client(port: int, body: bytes, requests: int) -> tuple[list[float], int]:
    """One client: `requests` POSTs one after another on one connection -> (seconds of each, errors)."""
    connection, times, errors = http.client.HTTPConnection("127.0.0.1", port, timeout=120), [], 0
    for _ in range(requests):
        start = time.perf_counter()
        try:
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            text = answer.read()
            ok = answer.status == 200 and len(json.loads(text)["predictions"]) == 100
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            connection.close()
            connection, ok = http.client.HTTPConnection("127.0.0.1", port, timeout=120), False
        times.append(time.perf_counter() - start)
        errors += not ok
    connection.close()
    return times, errors


def load(port: int, pid: int, body: bytes, clients: int, requests: int) -> list:
    """One round -> its table row."""
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=sample)
    watcher.start()
    before = rss(pid)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(port, body, requests), range(clients)))
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    times = sorted(t for r in results for t in r[0])
    errors = sum(r[1] for r in results)
    q = statistics.quantiles(times, n=100, method="inclusive")
    return [f"{clients} x {requests}", len(times), errors, f"{q[49] * 1000:.1f}", f"{q[98] * 1000:.1f}",
            f"{max(times) * 1000:.0f}", f"{len(times) / wall:.0f}", f"{len(times) * 100 / wall:,.0f}",
            f"{before / 2**20:,.0f}", f"{peak[0] / 2**20:,.0f}", f"{rss(pid) / 2**20:,.0f}"]


def malformed(port: int) -> tuple[int, int]:
    """200 malformed bodies -> (how many were answered 4xx, the longest answer in bytes)."""
    bodies = [json.dumps({"inputs": [[1.0, 2.0, 3.0]]}), json.dumps({"inputs": [[["a"] * 8] * 8]}),
              json.dumps({"inputs": np.full((2, 1, 8, 8), np.nan).tolist()}), "", "{{{", json.dumps({"inputs": []}),
              "x" * 10_000_000]
    refused, longest = 0, 0
    for i in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", "/invocations", bodies[i % len(bodies)], {"Content-Type": "application/json"})
        answer = connection.getresponse()
        text = answer.read()
        refused += 400 <= answer.status < 500
        longest = max(longest, len(text))
        connection.close()
    return refused, longest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", default="8x500,32x100", help="CLIENTSxREQUESTS, comma-separated")
    args = p.parse_args(argv)
    rounds = [tuple(int(n) for n in r.split("x")) for r in args.rounds.split(",")]
    rows = np.random.default_rng(0).integers(0, 17, (100, 1, 8, 8)).astype(np.float32)
    body = json.dumps({"inputs": rows.tolist()}).encode()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env["TRAINFLOW_HOME"] = str(Path(tmp) / "home")
        subprocess.run([TRAINFLOW, "run", "--set", "training.epochs=5", "--json"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = free_port()
        server = subprocess.Popen([TRAINFLOW, "serve-model", "models:/digits-cnn@champion", "--port", str(port)],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            server.stdout.readline()  # the ready line: printed once its own /health answered
            first = client(port, body, 20)  # warm-up, unmeasured
            assert first[1] == 0, "the warm-up requests failed"
            table_rows = [load(port, server.pid, body, clients, requests) for clients, requests in rounds]
            refused, longest = malformed(port)
            after = client(port, body, 1)
        finally:
            server.send_signal(2)
            server.wait(60)
    print(header("trainflow serve-model under load: POSTs of 100 rows from concurrent clients on the loopback"))
    print(table(["clients x requests", "requests", "errors", "p50 ms", "p99 ms", "max ms", "requests/s", "rows/s",
                 "RSS before MiB", "peak RSS MiB", "RSS after MiB"], table_rows))
    print(f"\n200 malformed bodies: {refused} answered 4xx, the longest answer {longest:,} bytes; a good request "
          f"after them: {'answered' if after[1] == 0 else 'FAILED'}")


if __name__ == "__main__":
    main()
