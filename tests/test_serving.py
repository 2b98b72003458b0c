"""`trainflow serve-model` as a real process on a real port: it answers as the registered model predicts, names the
version it serves (also after its alias moves) and the classes in the order of its scores, serves a run's model named
by runs:/RUN_ID, stops on SIGINT and SIGTERM with exit code 0 leaving no process,
and refuses a taken port or an unknown alias with one line, starting nothing."""

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import cli_env, listening
from mlflow import MlflowClient
from ports import free_port
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cli"]  # this checkout's code (the console script may be another's)
NAME = "served-digits"
# small and quick, yet well above chance: 5 epochs at lr 0.01 reach about 0.85 test accuracy
TRAIN = ["--set", "training.epochs=5", "--set", "optimizer.lr=0.01", "--set", "model.channels=[8]",
         "--set", "model.hidden=[32]", "--set", "register.min_test_accuracy=0"]
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never through a proxy


def _env(folder) -> dict[str, str]:
    return cli_env(folder) | {"PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A project folder whose store holds NAME versions 1 and 2, trained and registered by `trainflow run` with
    other seeds (other weights: a server that answered with the wrong one would be seen), @champion on 1."""
    folder = tmp_path_factory.mktemp("served")
    for seed in (0, 1):  # the second for one epoch: other weights are all it needs
        more = ["--set", f"training.seed={seed}", *(["--set", "training.epochs=1"] if seed else [])]
        out = subprocess.run([*CLI, "run", "--name", NAME, *TRAIN, *more],
                             capture_output=True, text=True, timeout=600, cwd=folder, env=_env(folder))
        assert out.returncode == 0, out.stderr
    with _in_store(folder) as client:
        client.set_registered_model_alias(NAME, "champion", "1")
    return folder


def _predicted(store, version: int, rows: np.ndarray) -> np.ndarray:
    """What `version` predicts for `rows`, loaded in this process as a Python user would load it."""
    with _in_store(store):
        return np.asarray(mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(rows))


def _ignoring_sigint() -> None:
    """As a script's background job starts (`trainflow serve-model ... &`): SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_a_terminal() -> None:
    """As a terminal's foreground command starts: SIGINT at its default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(folder, uri: str, port: int, started=_in_a_terminal) -> tuple[subprocess.Popen, queue.Queue]:
    """`serve-model` in a session of its own (its process group is everything it started), its signal dispositions
    set by `started` (not inherited from however the suite was started); its stdout lines go to the queue, its
    stderr to folder/serve-PORT.err."""
    err = open(Path(folder) / f"serve-{port}.err", "w")  # noqa: SIM115  closed with the process
    proc = subprocess.Popen([*CLI, "serve-model", uri, "--port", str(port)], cwd=folder, env=_env(folder),
                            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                            preexec_fn=started)
    err.close()
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def _stderr(folder, port: int) -> str:
    return (Path(folder) / f"serve-{port}.err").read_text()


def _ready(proc, lines: queue.Queue, folder, port: int, timeout: float = 120) -> str:
    try:
        return lines.get(timeout=timeout).rstrip("\n")
    except queue.Empty:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"no ready line after {timeout} s: {_stderr(folder, port)}") from None


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with DIRECT.open(request, timeout=30) as answer:
        return json.load(answer)


def _get(port: int, path: str):
    with DIRECT.open(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.status, answer.read().decode()


def _stop(proc, signum: int) -> int:
    """Send `signum` to the server's process group (as Ctrl+C does to a terminal's foreground group); -> exit code,
    once no process of the group remains."""
    os.killpg(proc.pid, signum)
    code = proc.wait(timeout=60)
    with pytest.raises(ProcessLookupError):  # nothing it started outlives it
        os.killpg(proc.pid, 0)
    return code


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextlib.contextmanager
def _in_store(store):
    """This process on the store of `store` (the session's is elsewhere): a registry call that looks up the logged
    model, and loading by a models:/ URI, go through the tracking URI."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{store}/.trainflow/mlflow.db")
    try:
        yield MlflowClient()
    finally:
        mlflow.set_tracking_uri(previous)


def test_served_model_predicts_as_loaded_names_its_version_and_stops_on_sigint(store):
    """Started as a script's background job, with SIGINT ignored: `kill -INT` still stops it (flows/processes.py)."""
    digits = load_digits()
    rows, labels = digits.images[:100].reshape(-1, 1, 8, 8).astype(np.float32), digits.target[:100]
    port = free_port()
    proc, lines = _start(store, f"models:/{NAME}@champion", port, started=_ignoring_sigint)
    try:
        ready = _ready(proc, lines, store, port)
        assert ready == (f"serving {NAME} version 1 (@champion) on http://127.0.0.1:{port}  "
                         "(POST /invocations; GET /health; Ctrl+C stops)"), ready
        assert listening(proc.pid) == {"127.0.0.1"}  # its sockets, not the URL it printed
        # raw digits as nested lists, as curl would send them: one row of 10 class scores per input
        answer = _post(port, {"inputs": rows.tolist()})
        served = np.asarray(answer["predictions"])
        assert served.shape == (100, 10)
        expected, other = _predicted(store, 1, rows), _predicted(store, 2, rows)
        assert not np.allclose(expected, other, atol=1e-3)  # the two versions answer differently
        assert (served.argmax(1) == expected.argmax(1)).all()
        assert np.allclose(served, expected, atol=1e-4)
        accuracy = (served.argmax(1) == labels).mean()
        assert accuracy > 0.5, accuracy  # chance is 0.1
        # the classes in the order of the scores (digits: 0..9), as registration recorded them
        health = {"status": "ok", "model": NAME, "version": 1, "alias": "champion", "uri": f"models:/{NAME}/1",
                  "classes": [str(d) for d in range(10)]}
        status, body = _get(port, "/health")
        assert status == 200 and json.loads(body).items() >= health.items() and json.loads(body)["run_id"]
        assert _get(port, "/ping")[0] == 200  # MLflow's own
        # the alias moves to version 2: the running server keeps answering as version 1, and says so
        with _in_store(store) as client:
            client.set_registered_model_alias(NAME, "champion", "2")
        assert json.loads(_get(port, "/health")[1]).items() >= health.items()
        assert np.allclose(np.asarray(_post(port, {"inputs": rows.tolist()})["predictions"]), expected, atol=1e-4)
        body = {"inputs": rows.tolist()}
        times = []
        for _ in range(20):
            start = time.perf_counter()
            _post(port, body)
            times.append(time.perf_counter() - start)
        print(f"\none POST of 100 rows: median {statistics.median(times) * 1000:.1f} ms over 20")
    finally:
        code = _stop(proc, signal.SIGINT)
        with _in_store(store) as client:  # @champion back on version 1, as the fixture left it
            client.set_registered_model_alias(NAME, "champion", "1")
    err = _stderr(store, port)
    assert code == 0, err
    assert err.splitlines()[-1] == "stopped (SIGINT)" and "Traceback" not in err, err
    assert f"loaded {NAME} version 1 (@champion) from models:/{NAME}/1" in err
    assert "; scores per input in the order of its 10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\n" in err, err
    assert _nothing_listens(port)


def test_sigterm_stops_a_server_named_by_version_with_exit_code_0(store):
    port = free_port()
    proc, lines = _start(store, f"models:/{NAME}/1", port)
    try:
        assert _ready(proc, lines, store, port).startswith(f"serving {NAME} version 1 ")
        assert json.loads(_get(port, "/health")[1])["alias"] is None  # named by its version
    finally:
        code = _stop(proc, signal.SIGTERM)
    err = _stderr(store, port)
    assert code == 0 and err.splitlines()[-1] == "stopped (SIGTERM)" and "Traceback" not in err, err
    assert _nothing_listens(port)


MALFORMED = {  # body -> what its 400's message says
    json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode():
        "Shape of input (1, 3) does not match expected shape (-1, 1, 8, 8)",
    json.dumps({"inputs": [[["a"] * 8] * 8]}).encode(): "could not convert string to float",
    json.dumps({"inputs": np.full((2, 1, 8, 8), np.nan).tolist()}).encode(): "the inputs hold NaN or an infinity",
    json.dumps({"inputs": np.full((2, 1, 8, 8), np.inf).tolist()}).encode(): "the inputs hold NaN or an infinity",
    b"": "Ensure that input is a valid JSON formatted string",
    json.dumps({"inputs": []}).encode(): "Failed to enforce schema",
    b"{{{": "Ensure that input is a valid JSON formatted string",
    b"x" * 10_000_000: "Ensure that input is a valid JSON formatted string",  # 10 MB
    json.dumps({"inputs": np.zeros((20_000, 1, 7, 8)).tolist()}).encode(): "does not match expected shape",  # 5 MB
}


def _answer(port: int, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with DIRECT.open(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def test_malformed_bodies_are_400_naming_the_problem_and_a_hang_up_ends_it_after_the_request_in_flight(store):
    """200 malformed bodies (another shape, strings, NaN, infinities, empty, not JSON, 5 and 10 MB): each answered
    400 saying why in a short message (MLflow's would repeat a body it cannot parse: 10 MB back), the server's memory
    bounded and its answers to a good body unchanged. It serves a model named by its run, runs:/RUN_ID, as the
    README names a run's model (registered or not: a --no-register run's is found the same way)."""
    with _in_store(store) as client:
        run_id = client.get_model_version(NAME, "1").run_id
    port = free_port()
    proc, lines = _start(store, f"runs:/{run_id}", port)
    rows = np.random.default_rng(0).uniform(0, 16, (40_000, 1, 8, 8)).astype(np.float32)
    good = json.dumps({"inputs": rows[:100].tolist()}).encode()
    answered: dict = {}
    try:
        assert _ready(proc, lines, store, port).startswith(f"serving the model of run {run_id} ({NAME}) on ")
        about = json.loads(_get(port, "/health")[1])
        assert (about["version"], about["alias"], about["run_id"]) == (None, None, run_id), about
        assert about["uri"].startswith("models:/m-") and about["classes"] == [str(d) for d in range(10)]
        expected = json.loads(_answer(port, good)[1])["predictions"]
        assert np.allclose(expected, _predicted(store, 1, rows[:100]), atol=1e-4)  # version 1's run's model
        # each once (parsing the large ones raises the heap's high-water mark once), then the small ones and the
        # large ones again: 200 in all, the memory measured after the first round
        small = [b for b in MALFORMED if len(b) < 1_000_000]
        bodies = [*MALFORMED, *small * 27, *[b for b in MALFORMED if len(b) >= 1_000_000]]
        assert len(bodies) == 200
        for i, body in enumerate(bodies):
            if i == len(MALFORMED):
                settled = _rss_mib(proc.pid)
            code, said = _answer(port, body)
            assert code == 400 and len(said) < 2500, (code, said[:300])
            assert MALFORMED[body] in json.loads(said)["message"], said
        assert _rss_mib(proc.pid) - settled < 40, (settled, _rss_mib(proc.pid))
        assert json.loads(_answer(port, good)[1])["predictions"] == expected  # still serving, as before

        body, sent = json.dumps({"inputs": rows.tolist()}), threading.Event()

        def big():  # seconds of parsing and scoring for the server: in flight when the hang-up arrives
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            sent.set()
            answer = connection.getresponse()
            answered["predictions"] = len(json.loads(answer.read())["predictions"])

        request = threading.Thread(target=big)
        request.start()
        assert sent.wait(timeout=60)
        time.sleep(0.2)  # the server reading it
    finally:
        code = _stop(proc, signal.SIGHUP)
    request.join(timeout=60)
    err = _stderr(store, port)
    assert code == 0 and err.splitlines()[-1] == "stopped (SIGHUP)", err
    assert answered == {"predictions": 40_000}  # answered before the server ended
    assert _nothing_listens(port)


def test_a_port_in_use_or_an_absent_device_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*CLI, "serve-model", f"models:/{NAME}@champion", "--port", str(port)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(tmp_path))
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr == f"error: port {port} on 127.0.0.1 is in use: stop what serves it or choose another with " \
                         "--port\n"
    assert not (tmp_path / ".trainflow").exists()  # refused before any store was opened
    out = subprocess.run([*CLI, "serve-model", f"models:/{NAME}@champion", "--device", "cuda:99"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(tmp_path))
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.startswith("error: --device: 'cuda:99' asked for, but ") and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / ".trainflow").exists()


def test_an_unknown_alias_is_one_line_and_serves_nothing(store):
    port = free_port()
    out = subprocess.run([*CLI, "serve-model", f"models:/{NAME}@nosuch", "--port", str(port)],
                         capture_output=True, text=True, timeout=120, cwd=store, env=_env(store))
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.startswith(f"error: {NAME} has no alias @nosuch; its aliases: ") and "@champion (version " in \
        out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert _nothing_listens(port)


def test_after_a_rollback_a_server_started_again_serves_the_earlier_champion(store):
    with _in_store(store) as client:  # a third version: version 1's weights again, so a and b differ
        first = client.get_model_version(NAME, "1")
        a, b = 2, int(client.create_model_version(NAME, first.source, first.run_id).version)
    env = _env(store)
    rows = load_digits().images[:50].reshape(-1, 1, 8, 8).astype(np.float32)

    def trainflow(*args):
        out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=store, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    try:
        trainflow("promote", NAME, str(a), "--reason", "canary")
        trainflow("promote", NAME, str(b))
        assert trainflow("rollback", NAME).startswith(f"@champion of {NAME}: version {b} -> version {a}")
        history = [line.split() for line in trainflow("models", NAME, "--history", "--alias", "champion")
                   .splitlines()[2:]]
        assert [row[3:6] for row in history][-3:] == [["1", str(a), "promote"], [str(a), str(b), "promote"],
                                                      [str(b), str(a), "rollback"]]
        assert history[0][3:6] == ["-", "1", "gate"]  # the first training's promotion, recorded by the gate
        port = free_port()
        proc, lines = _start(store, f"models:/{NAME}@champion", port)
        try:
            assert _ready(proc, lines, store, port).startswith(f"serving {NAME} version {a} (")
            assert json.loads(_get(port, "/health")[1])["version"] == a
            served = np.asarray(_post(port, {"inputs": rows.tolist()})["predictions"])
            assert np.allclose(served, _predicted(store, a, rows), atol=1e-4)  # version a's weights, not b's
            assert not np.allclose(served, _predicted(store, b, rows), atol=1e-3)
        finally:
            assert _stop(proc, signal.SIGINT) == 0
    finally:
        with _in_store(store) as client:
            client.set_registered_model_alias(NAME, "champion", "1")
