"""Every long-running `trainflow` command stops with everything it started when its own process (not its group)
is signalled, as a supervisor, `timeout`, systemd or an IDE does, or when it dies: no process of its tree is left
and its ports are free. A server stops on SIGINT, SIGTERM and SIGHUP with exit code 0 whatever it inherited, but
for a SIGHUP ignored under nohup (flows/processes.py): each test sets the dispositions it starts with, so none
depends on how the suite itself was started (a background job's shell ignores SIGINT)."""

import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import TRAINFLOW, all_cpus, cli_env
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.channels=[8]", "--set", "model.hidden=[32]"]


def _starting_with(ignored: tuple[int, ...] = ()):
    """A preexec_fn: the child starts with `ignored` ignored (a script's background job: SIGINT; nohup: SIGHUP) and
    every other stop signal at its default, as in a terminal's foreground."""
    def dispositions() -> None:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN if s in ignored else signal.SIG_DFL)
    return dispositions


def _start(tmp_path, *args, ignored: tuple[int, ...] = (), warm: bool = True) -> subprocess.Popen:
    """`trainflow ARGS`; with `warm` false, with the warm process off: a command that runs in its own process."""
    env = cli_env(tmp_path) | ({} if warm else {"TRAINFLOW_WARM_MINUTES": "0"})
    return subprocess.Popen([TRAINFLOW, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_starting_with(ignored))


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _left(processes: list[psutil.Process], within: float) -> list[str]:
    """The processes still running after `within` seconds (an exited one nobody has reaped yet counts as gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _end(tree: list[psutil.Process], proc: subprocess.Popen | None = None) -> None:
    """Whatever a failed test left running (of `tree`, and of `proc`'s tree now) is killed, not left behind."""
    if proc is not None and proc.poll() is None:  # not reaped: its pid is still its own
        tree = [*tree, *_tree(proc.pid)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_until(what: str, ready, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"trainflow exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)


def _terminated(proc: subprocess.Popen, what: str, ready, settle: float = 0.0) -> tuple[list[str], str]:
    """Once `ready()` (and `settle` seconds more), SIGTERM to the command alone; it must end within 90 s and leave
    nothing of its tree running. -> (its tree's command lines as they were, its stderr)."""
    tree = []
    try:
        _wait_until(what, ready, proc)
        time.sleep(settle)
        tree = _tree(proc.pid)
        commands = [" ".join(p.cmdline()) for p in tree]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert _left(tree, within=30) == []
    finally:
        _end(tree, proc)
    return commands, err


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


STOPS = {  # how the UI is stopped: (the signal, what it was started with ignored) -> what it says on stderr
    "SIGTERM": (signal.SIGTERM, (), "stopped (SIGTERM)"),
    "SIGINT": (signal.SIGINT, (), "stopped (SIGINT)"),
    "SIGINT, started ignoring it (a background job)": (signal.SIGINT, (signal.SIGINT,), "stopped (SIGINT)"),
    "SIGHUP": (signal.SIGHUP, (), "stopped (SIGHUP)"),
    "SIGHUP under nohup (ignored), then SIGTERM": (signal.SIGHUP, (signal.SIGHUP,), "stopped (SIGTERM)"),
    "SIGKILL": (signal.SIGKILL, (), None),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_ui_stops_with_everything_it_started(tmp_path, how):
    signum, ignored, said = STOPS[how]
    port = free_port()
    proc, tree = _start(tmp_path, "ui", "--port", str(port), ignored=ignored), []
    try:
        _wait_until("MLflow UI answering", lambda: _answers(port), proc)
        tree = _tree(proc.pid)
        commands = [" ".join(p.cmdline()) for p in tree]
        proc.send_signal(signum)
        if signum == signal.SIGHUP and ignored:  # nohup's SIGHUP changes nothing: the UI still answers
            time.sleep(1)
            assert proc.poll() is None and _answers(port)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert _left(tree, within=30) == []
    finally:
        _end(tree, proc)
    assert not _listening(port)
    assert proc.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 0), err
    if said:
        assert err.splitlines()[-1] == said, err
    assert not [c for c in commands if "huey" in c], "the UI needs no job runner"
    assert "Traceback" not in err and "INFO" not in err and "Deprecat" not in err and "middleware" not in err, err


def _read(db, query: str):
    """The first row of `query` on the MLflow store `db`, read without writing (the command owns the store)."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as store:
            return store.execute(query).fetchone()
    except sqlite3.OperationalError:  # the command is creating the store's tables
        return None


def test_a_run_told_to_stop_ends_its_mlflow_run_and_its_temporary_api(tmp_path):
    db = tmp_path / ".trainflow" / "mlflow.db"
    proc = _start(tmp_path, "run", "--set", "training.epochs=500", "--set", "name=stopped", *TINY, warm=False)
    tree, err = _terminated(proc, "an epoch's metrics",
                            lambda: _read(db, "SELECT 1 FROM metrics WHERE key = 'train_loss'"))
    assert any("prefect.server.api.server:create_app" in p for p in tree)  # the temporary API
    assert proc.returncode == 143, err
    assert _read(db, "SELECT status FROM runs") == ("FAILED",)
    assert "stopping (SIGTERM)" in err


def _runs(db, kind: str) -> list[tuple]:
    """(status, failure_reason) of each run of `kind` in the MLflow store `db`."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as store:
        try:
            return store.execute(
                "SELECT r.status, (SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'failure_reason') "
                "FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'trainflow.kind' AND k.value = ?",
                (kind,)).fetchall()
        except sqlite3.OperationalError:  # the command is creating the store's tables
            return []


@pytest.mark.parametrize("runner", ["thread", "dask"])
def test_a_stopped_compare_leaves_no_child_run_running_or_finished(tmp_path, runner):
    """Variants training in threads stop at their next batch (a signal reaches only the main thread); a Dask
    cluster's stop with the command: either way every child run ends FAILED or KILLED with the reason."""
    db = tmp_path / ".trainflow" / "mlflow.db"
    proc = _start(tmp_path, "compare", "--vary", "optimizer.lr=0.01,0.02", "--runner", runner, "--set",
                  "training.epochs=500", "--set", "training.early_stopping.enabled=false", *TINY)
    _, err = _terminated(proc, "two variants training",
                         lambda: [s for s, _ in _runs(db, "variant")] == ["RUNNING"] * 2, settle=2)
    assert proc.returncode == 143, err
    [(status, reason)], variants = _runs(db, "comparison"), _runs(db, "variant")
    assert status == "FAILED" and reason.endswith("stopped by SIGTERM"), reason  # Prefect's TerminationSignal
    assert len(variants) == 2 and {s for s, _ in variants} <= {"FAILED", "KILLED"}, variants
    assert all(reason and "stopped by SIGTERM" in reason for _, reason in variants), variants


SERVE = """
import os, subprocess, sys, time
from flows import SERVED_BY
os.environ[SERVED_BY] = str(os.getpid())  # as `trainflow serve` does (deployments/serve.py)
run = subprocess.Popen([sys.executable, "-c", "import flows, time; print('in', flush=True); time.sleep(300)"],
                       stdout=subprocess.PIPE, text=True)
run.stdout.readline()
print(run.pid, flush=True)
time.sleep(300)
"""


def test_a_flow_run_process_ends_with_the_serve_that_started_it_even_killed(tmp_path):
    """`trainflow serve` killed with SIGKILL (nothing of it runs) leaves no flow-run process: each imports flows, finds
    serve's pid in TRAINFLOW_SERVED_BY and asks the kernel for a SIGTERM when serve ends. Here the flow run is a
    process that imports flows as Prefect's flow-run processes do (test_operations checks the variable on a real
    flow run of `trainflow serve`)."""
    serve = subprocess.Popen([sys.executable, "-c", SERVE], env=cli_env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    run = psutil.Process(int(serve.stdout.readline()))
    try:
        serve.kill()
        serve.wait(timeout=30)
        assert _left([run], within=20) == []
    finally:
        _end([run])


# serve killed before its flow run's process got as far as importing flows (Prefect's engine loads the flow first):
# the flow run would run on to its end as an orphan
SERVE_EARLY = """
import os, subprocess, sys, time
from flows import SERVED_BY
os.environ[SERVED_BY] = str(os.getpid())
run = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); import flows, pathlib; "
                        "pathlib.Path(sys.argv[1]).write_text('ran on')", sys.argv[1]], stdin=subprocess.PIPE)
print(run.pid, flush=True)
time.sleep(300)
"""


def test_a_flow_run_process_whose_serve_was_killed_before_it_imported_flows_ends_there(tmp_path):
    serve = subprocess.Popen([sys.executable, "-c", SERVE_EARLY, str(tmp_path / "ran")], env=cli_env(tmp_path),
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    run = psutil.Process(int(serve.stdout.readline()))
    try:
        serve.kill()  # its stdin closes with serve: the flow run goes on to import flows
        serve.wait(timeout=30)
        assert _left([run], within=30) == []
        assert not (tmp_path / "ran").exists()
    finally:
        _end([run])


def test_down_leaves_no_server_process_and_frees_both_ports(tmp_path):
    ports = free_port(), free_port()
    env = cli_env(tmp_path)
    up, tree = subprocess.run([TRAINFLOW, "up", "--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1])],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              preexec_fn=all_cpus), []
    try:
        assert up.returncode == 0, up.stderr
        servers = [int(f.read_text().split()[0]) for f in (tmp_path / ".trainflow" / "stack").glob("*.pid")]
        assert len(servers) == 2
        tree = [p for pid in servers for p in _tree(pid)]
        commands = [" ".join(p.cmdline()) for p in tree]
        down = subprocess.run([TRAINFLOW, "down"], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0 and "stopped: prefect, mlflow" in down.stdout, down.stderr
        assert _left(tree, within=5) == []
    finally:
        _end(tree)
    assert not any(_listening(port) for port in ports)
    assert not [c for c in commands if "huey" in c], "the stack needs no MLflow job runner"
