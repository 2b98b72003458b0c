"""The temporary Prefect API a flow command starts for itself when the warm process is off
(TRAINFLOW_WARM_MINUTES=0): it serves the run, and it never outlives the command, also when the command is killed.
(With the warm process on, the API is the warm process's: tests/test_warm.py.)"""

import json
import signal
import subprocess
import time
from pathlib import Path

from conftest import TRAINFLOW, cli_env


def _api_server(pid: int) -> int | None:
    """The pid of the uvicorn child serving Prefect's API, if `pid` has one."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"uvicorn" in cmd and b"prefect.server.api.server:create_app" in cmd:
                return int(kid)
    return None


def _servers_of(tmp_path) -> list[int]:
    """Prefect API processes started for the TRAINFLOW_HOME of this test (found through their environment)."""
    mark = f"TRAINFLOW_HOME={tmp_path / '.trainflow'}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"prefect.server.api.server:create_app" in (proc / "cmdline").read_bytes() and \
                    mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if not _gone(pid, within=0)]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its parent has not reaped it
            return True
        time.sleep(0.1)
    return False


def _start(tmp_path, *args):
    return subprocess.Popen([TRAINFLOW, "run", *args], env=cli_env(tmp_path) | {"TRAINFLOW_WARM_MINUTES": "0"},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_server(proc) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (server := _api_server(proc.pid)) is not None:
            return server
        time.sleep(0.05)
    raise AssertionError(f"no temporary API process appeared (exit code {proc.poll()})")


def test_the_run_uses_a_temporary_api_that_stops_with_it(tmp_path):
    proc = _start(tmp_path, "--json", "--set", "training.epochs=1", "--set", "name=temporary-api")
    server = _wait_for_server(proc)
    assert server in _servers_of(tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["experiment"] == "temporary-api"
    assert "local: temporary Prefect API http://127.0.0.1:" in " ".join(err.split())
    assert _gone(server, within=10), "the temporary API outlived the command"
    assert _servers_of(tmp_path) == []
    assert (tmp_path / ".trainflow" / "prefect" / "temporary-api.log").exists()


def test_a_killed_command_takes_its_temporary_api_along(tmp_path):
    proc = _start(tmp_path, "--set", "training.epochs=200")
    server = _wait_for_server(proc)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _gone(server, within=15), "the temporary API outlived a killed command"


def test_bad_input_fails_fast_and_leaves_no_server_behind(tmp_path):
    proc = _start(tmp_path, "--set", "optimizer.lr=-1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "optimizer.lr" in err and "Traceback" not in err
    assert all(_gone(pid, within=10) for pid in _servers_of(tmp_path))
