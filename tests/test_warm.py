"""The warm process (flows/warm.py): the first flow command in a project leaves it behind; later commands run as its
forks, as if they ran in the process the user started (streams, exit codes, signals); it ends when idle, with
`trainflow down`, or when its folder goes, and nothing it started outlives it. Each test sets the dispositions and
the environment it starts with: none depends on how the suite was started."""

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import TRAINFLOW, cli_env, forks_in, warm_folder, warm_ready
from mlflow import MlflowClient

TINY = ["--set", "model.channels=[8]", "--set", "model.hidden=[32]", "--set", "training.early_stopping.enabled=false"]


def _own(tmp_path, minutes: float = 2) -> dict[str, str]:
    """The environment of a project with a warm process of its own (not the session's), ending after `minutes`."""
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "TRAINFLOW_WARM_DIR"}
    return env | {"TRAINFLOW_WARM_MINUTES": str(minutes)}


def _trainflow(tmp_path, env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([TRAINFLOW, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _warm(tmp_path) -> list[psutil.Process]:
    """The project's warm processes."""
    return [p for p in psutil.process_iter(["cmdline"]) if "flows.warm_process" in " ".join(p.info["cmdline"] or [])
            and str(tmp_path / ".trainflow" / "warm") in " ".join(p.info["cmdline"])]


def _until(what: str, done, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def _gone(processes: list[psutil.Process], within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _ready(tmp_path, env) -> bool:
    return "warm     ready" in _trainflow(tmp_path, env, "status").stdout


def test_the_first_command_leaves_it_the_next_is_its_fork_and_another_environment_gets_its_own(tmp_path):
    env = _own(tmp_path)
    bad = _trainflow(tmp_path, env, "run", "--set", "training.epoch=1")  # bad input starts nothing
    assert bad.returncode == 2 and not (tmp_path / ".trainflow").exists()
    first = _trainflow(tmp_path, env, "run", "--json", "--set", "training.epochs=2", *TINY)
    assert first.returncode == 0, first.stderr
    assert "local: the project's warm Prefect API http://127.0.0.1:" in " ".join(first.stderr.split())
    warm = _warm(tmp_path)
    assert len(warm) == 1  # it outlived the command that started it: its Prefect API and its libraries
    api = warm[0].children()
    assert [" ".join(p.cmdline()) for p in api if "prefect.server.api.server:create_app" in p.cmdline()]
    _until("warm process ready", lambda: _ready(tmp_path, env))

    # started on one CPU (`taskset`), another than the warm process's where there is one: its fork runs there
    cpus = sorted(os.sched_getaffinity(os.getppid()))
    cpu = next((c for c in cpus if c not in warm[0].cpu_affinity()), cpus[-1])
    proc = subprocess.Popen([TRAINFLOW, "run", "--json", "--set", "training.epochs=2", *TINY], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    _until("its fork", lambda: forks_in(tmp_path) or proc.poll() is not None)
    assert forks_in(tmp_path) and psutil.Process(forks_in(tmp_path)[0]).ppid() == warm[0].pid
    assert psutil.Process(forks_in(tmp_path)[0]).cpu_affinity() == [cpu]
    assert psutil.Process(proc.pid).children() == []  # no Prefect API of its own: the command is the fork's
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    second = json.loads(out)  # stdout: exactly the one JSON object, as in its own process
    assert second["metrics"]["test_accuracy"] == json.loads(first.stdout)["metrics"]["test_accuracy"]
    assert second["run_id"] != json.loads(first.stdout)["run_id"]

    status = _trainflow(tmp_path, env, "status").stdout
    assert re.search(r"warm +ready +http://127\.0\.0\.1:\d+/api +pid \d+ +ends after \d+ more idle", status), status

    # another environment gets a warm process of its own: a variable read when torch loads, which a fork of this
    # one could not honour, runs the command in its own process, which leaves a second warm process
    other = env | {"OMP_NUM_THREADS": "1"}
    assert _trainflow(tmp_path, other, "run", "--no-register", "--set", "training.epochs=1", *TINY).returncode == 0
    assert forks_in(tmp_path) == [] and len(_warm(tmp_path)) == 2
    assert len(list((tmp_path / ".trainflow" / "warm").iterdir())) == 2
    assert _trainflow(tmp_path, env, "status").stdout.count("\nwarm ") == 2
    second = [p for p in _warm(tmp_path) if p.pid != warm[0].pid]
    second += [child for p in second for child in p.children()]  # and its Prefect API
    down = _trainflow(tmp_path, env, "down")
    assert down.returncode == 0 and down.stdout.strip() == "stopped: 2 warm processes"
    tree = [*warm, *api, *second]
    assert _gone(tree), [p.cmdline() for p in tree if p.is_running()]
    assert not list((tmp_path / ".trainflow" / "warm").glob("*/socket"))
    assert "warm     stopped" in _trainflow(tmp_path, env, "status").stdout


def test_down_in_one_project_leaves_another_projects_command_to_finish_on_a_shared_warm_process(tmp_path):
    from flows import warm

    for name in ("this", "other"):
        (tmp_path / name).mkdir()
    other = warm_ready(tmp_path / "other")  # the session's warm process, shared by every test's project
    where = warm_folder()
    pid = warm.ask({"op": "status"}, where)["pid"]
    proc = subprocess.Popen([TRAINFLOW, "run", "--json", "--no-register", "--set", "training.epochs=6", *TINY],
                            env=other, cwd=tmp_path / "other", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _until("its fork", lambda: forks_in(tmp_path / "other") or proc.poll() is not None)
    assert forks_in(tmp_path / "other"), (proc.communicate(), (warm_folder() / "log").read_text()[-3000:])
    down = _trainflow(tmp_path / "this", cli_env(tmp_path / "this"), "down")
    # (the lane may hold another, ending: retired by an earlier test's down while a command of its ran out)
    assert down.returncode == 0 and re.fullmatch(r"stopped: \d+ warm process(es)?", down.stdout.strip()), down
    assert warm.ask({"op": "status"}, where) is None  # it takes no more commands (the next starts another) ...
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and json.loads(out)["metrics"]["test_accuracy"] > 0, err  # ... but ran that one out
    assert _gone([psutil.Process(pid)], within=300)  # and ends once every project's commands have


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_the_command_stops_its_fork_and_its_run(tmp_path, signum):
    env = warm_ready(tmp_path)  # the session's warm process
    db = tmp_path / ".trainflow" / "mlflow.db"
    proc = subprocess.Popen([TRAINFLOW, "run", "--no-register", "--set", "training.epochs=500", *TINY], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _until("an epoch's metrics", lambda: db.exists() and _metrics(db) or proc.poll() is not None)
    forks = [psutil.Process(pid) for pid in forks_in(tmp_path)]
    assert len(forks) == 1, f"the command was not forwarded: {(warm_folder() / 'log').read_text()[-3000:]}"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert _gone(forks), "the fork outlived its command"
    expected = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[signum]
    assert proc.returncode == expected, err
    if signum != signal.SIGKILL:
        assert err.strip().splitlines()[-1] == {signal.SIGTERM: "stopping (SIGTERM) ...",
                                                signal.SIGINT: "interrupted"}[signum], err
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]  # stopped cleanly, also when its command was killed


def _metrics(db) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as store:
            return store.execute("SELECT 1 FROM metrics WHERE key = 'train_loss'").fetchone() is not None
    except sqlite3.OperationalError:
        return False


def test_a_killed_fork_is_reported_as_a_shell_would_and_a_terminal_stays_one(tmp_path):
    env = warm_ready(tmp_path)
    db = tmp_path / ".trainflow" / "mlflow.db"
    proc = subprocess.Popen([TRAINFLOW, "run", "--no-register", "--set", "training.epochs=500", *TINY], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _until("an epoch's metrics", lambda: db.exists() and _metrics(db) or proc.poll() is not None)
    assert proc.poll() is None and len(forks_in(tmp_path)) == 1, forks_in(tmp_path)
    os.kill(forks_in(tmp_path)[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 137 and err.strip().endswith("failed: the command's process was killed by SIGKILL")

    # a terminal: the fork writes to it, so it sees a terminal (a live bar, colours) as the command would
    leader, follower = pty.openpty()
    proc = subprocess.Popen([TRAINFLOW, "run", "--no-register", "--set", "training.epochs=3", *TINY], env=env,
                            cwd=tmp_path, stdout=follower, stderr=follower, stdin=follower)
    os.close(follower)
    seen = b""
    while proc.poll() is None or select.select([leader], [], [], 0.5)[0]:
        if select.select([leader], [], [], 0.5)[0]:
            try:
                seen += os.read(leader, 65536)
            except OSError:
                break
    os.close(leader)
    assert proc.wait() == 0, seen[-2000:]
    plain = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen)
    assert seen != plain and b"done: test accuracy" in plain  # rich's escapes: it wrote to a terminal


def _started(tmp_path, env) -> list[psutil.Process]:
    """The project's warm process started as a first command starts it (flows/warm.py), only without the command:
    it loads at once -> it and its Prefect API."""
    from flows import warm

    code = "from flows import warm; print(warm.folder())"
    where = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.strip()
    process = warm.start(Path(where), env, starter=False)[1]
    _until("its Prefect API", lambda: len(psutil.Process(process.pid).children()) == 1 or process.poll() is not None)
    return [psutil.Process(process.pid), *psutil.Process(process.pid).children()]


def test_it_ends_when_idle_or_when_its_folder_is_removed_and_takes_its_api_along(tmp_path):
    tree = _started(tmp_path, _own(tmp_path, minutes=0.05))  # 3 s
    assert _gone(tree, within=120), "an idle warm process did not end"
    tree = _started(tmp_path, _own(tmp_path, minutes=30))
    shutil.rmtree(tmp_path / ".trainflow")
    assert _gone(tree), "a warm process outlived its folder"


def test_the_fingerprint_follows_installs_not_files_beside_the_source(tmp_path):
    from flows import warm

    installed = tmp_path / "site-packages"
    installed.mkdir()
    path = [warm.SOURCE, str(installed)]
    before = warm.fingerprint({"OMP_NUM_THREADS": "2", "HOME": "/x"}, path)
    os.utime(warm.SOURCE, ns=(time.time_ns(), time.time_ns() + 10**9))  # a file added beside the project's packages
    assert warm.fingerprint({"OMP_NUM_THREADS": "2", "HOME": "/y"}, path) == before  # HOME: read when used
    (installed / "newlib").mkdir()  # an install
    os.utime(installed, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = warm.fingerprint({"OMP_NUM_THREADS": "2"}, path)
    assert after != before
    assert warm.fingerprint({"OMP_NUM_THREADS": "1"}, path) != after  # read when torch loads
