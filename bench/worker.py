"""Benchmark: a worker's flow run, from the moment the worker takes it (PENDING) to its end (COMPLETED), as a fork of
the project's warm process (flows/engine.py finds one ready) against in a process of its own (none running: the
path of Prefect's `python -m prefect.engine`). Real stack (`trainflow up`), work pool, deployments and worker; each
round runs training-pipeline/nightly with tests/deployments-small.yaml (an mlp, 2 epochs) both ways, alternating
which goes first. Times are the flow run's own state changes, so the worker's polling is not counted.

    .venv/bin/python -m bench.worker [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import commit, machine, median_interval, table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = "tests/deployments-small.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, home: Path):
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
        self.env |= {"TRAINFLOW_HOME": str(home / ".trainflow"), "PREFECT_HOME": str(home / "prefect-cli"),
                     "PREFECT_WORKER_QUERY_SECONDS": "1"}
        self.worker: subprocess.Popen | None = None

    def run(self, *args, cwd: Path = ROOT) -> str:
        out = subprocess.run([str(a) for a in args], env=self.env, cwd=cwd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{' '.join(map(str, args))} exited {out.returncode}:\n{out.stderr[-3000:]}")
        return out.stdout

    def up(self) -> None:
        self.run(BIN / "trainflow", "up", "--prefect-port", _port(), "--mlflow-port", _port())
        for line in (self.home / ".trainflow" / "stack" / "env").read_text().splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            self.env[key] = value
        self.run(BIN / "prefect", "work-pool", "create", "trainflow", "--type", "process")
        self.run(BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        with open(self.home / "worker.log", "w") as log:
            self.worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "trainflow"], cwd=self.home,
                                           env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def warm(self, ready: bool) -> None:
        """The project's warm process loaded, or none (`python -m bench.worker --warm`, in the stack's environment)."""
        subprocess.run([sys.executable, "-m", "bench.worker", "--warm", "ready" if ready else "none"], env=self.env,
                       cwd=ROOT, check=True)

    def flow_run(self) -> tuple[float, float]:
        """training-pipeline/nightly with the small config, to its end -> (PENDING to RUNNING, PENDING to COMPLETED)
        in seconds, from the flow run's recorded states."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.env["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
            deployment = c.read_deployment_by_name("training-pipeline/nightly")
            flow_run = c.create_flow_run_from_deployment(deployment.id, parameters={"config": SMALL})
            while not c.read_flow_run(flow_run.id).state.is_final():
                time.sleep(0.5)
            states = c.read_flow_run_states(flow_run.id)
        at = {s.type.value: s.timestamp.timestamp() for s in reversed(states)}  # the first of each kind
        if "COMPLETED" not in at:
            sys.exit(f"flow run {flow_run.id} did not complete: {[s.type.value for s in states]}\n"
                     f"{(self.home / 'worker.log').read_text()[-3000:]}")
        return at["RUNNING"] - at["PENDING"], at["COMPLETED"] - at["PENDING"]

    def stop(self) -> None:
        if self.worker is not None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            self.worker.wait(timeout=60)
        subprocess.run([BIN / "trainflow", "down"], env=self.env, cwd=ROOT, capture_output=True)


def warm_process(ready: bool) -> None:
    """In the stack's environment: the project's warm process started (so that it loads at once) and loaded, or
    every one stopped."""
    from flows import warm
    from tasks import settings

    if not ready:
        warm.stop()
        return
    where = warm.folder()
    if not warm.ask({"op": "status"}, where):
        warm.start(where, dict(settings.STARTED_WITH), starter=False)  # as a command starts it: its fingerprint
    deadline = time.monotonic() + 180
    while not (warm.ask({"op": "status"}, where, timeout=60) or {}).get("ready"):
        if time.monotonic() > deadline:
            sys.exit(f"the warm process did not load: {where / 'log'}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warm", choices=["ready", "none"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warm:
        return warm_process(args.warm == "ready")
    measured: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.up()
            stack.warm(False)
            stack.flow_run()  # the stores' and the servers' first use, not measured
            for r in range(args.rounds):
                for ready in (True, False) if r % 2 == 0 else (False, True):
                    stack.warm(ready)
                    measured[ready].append(stack.flow_run())
                    print(f"round {r + 1}: {'fork' if ready else 'own process'} {measured[ready][-1]}",
                          file=sys.stderr, flush=True)
        finally:
            stack.stop()
    rows = []
    for ready, name in ((False, "a process of its own (no warm process)"), (True, "a fork of the warm process")):
        starts, totals = zip(*measured[ready], strict=True)
        rows.append([name, statistics.median(starts), statistics.median(totals), len(totals)])
    ratios = [w[1] / c[1] for w, c in zip(measured[True], measured[False], strict=True)]
    low, high = median_interval(ratios)
    print(f"## A worker's flow run (training-pipeline/nightly, {SMALL})\n\n{machine()}; commit {commit()}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print(table(["flow run", "PENDING to RUNNING s", "PENDING to COMPLETED s", "runs"], rows))
    print(f"\nfork / own process, PENDING to COMPLETED: {statistics.median(ratios):.2f} [{low:.2f}, {high:.2f}]")
    print(json.dumps({str(k): v for k, v in measured.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
