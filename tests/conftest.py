"""Shared fixtures: small real datasets written to temporary folders, a real Prefect API (the test
harness) and a temporary MLflow SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Two lanes (pytest-xdist, as `make test` runs): each worker, and every process it starts, runs on a core of its own,
# so that the lanes' torch thread pools do not thrash each other (before torch is imported: it reads the affinity).
# The lane's warm process is started on all of them: it loads and serves its Prefect API on the idle core too (its
# forks run on their command's).
_LANE = os.environ.get("PYTEST_XDIST_WORKER", "")
_ALL_CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
if _LANE.startswith("gw") and _ALL_CPUS and len(_ALL_CPUS) > 1:
    os.sched_setaffinity(0, {sorted(_ALL_CPUS)[int(_LANE[2:]) % len(_ALL_CPUS)]})
# Before anything imports tasks/prefect/mlflow: a private .trainflow home and MLflow store for this session.
_HOME = tempfile.mkdtemp(prefix="trainflow-tests-")
os.environ["TRAINFLOW_HOME"] = _HOME
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_HOME}/mlflow.db"
os.environ.pop("PREFECT_API_URL", None)
# The `trainflow` processes of this session (of each lane: every xdist worker imports this file) share its warm
# processes (flows/warm.py): the first cli_env starts one, the commands run as its forks, each in its own project
# folder. One fingerprint for them all: every process finds this checkout's code first, started as a console script
# or with `python -m`. sessionfinish stops them; the idle limit is for a session that was killed.
ROOT = Path(__file__).resolve().parents[1]
_WARM = tempfile.mkdtemp(prefix="trainflow-warm-")
os.environ["TRAINFLOW_WARM_DIR"] = _WARM
os.environ["TRAINFLOW_WARM_MINUTES"] = os.environ.get("TRAINFLOW_WARM_MINUTES", "10")
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import tasks  # noqa: E402,F401  - applies trainflow's local defaults before anything imports prefect
from trainlib.data import sources  # noqa: E402

TRAINFLOW = str(Path(sys.executable).parent / "trainflow")  # the console script, run as a real process
# what mlflow.register_model prints on stderr, first version or later: trainflow's commands print none of it
REGISTRY_NOTICES = ("Successfully registered model", "already exists. Creating a new version", "Created version")


def cli_env(folder) -> dict[str, str]:
    """Environment for a `trainflow` process working in `folder`: its own .trainflow home and torch cache,
    none of this session's Prefect or MLflow settings. The first call starts the session's warm process (it loads
    while the test goes on; the first command waits for it): every command with this environment is its fork."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    _warm_session(env)
    return env | {"TRAINFLOW_HOME": str(Path(folder) / ".trainflow"), "TORCH_HOME": str(Path(folder) / "torch")}


_warm: dict = {}  # the session's warm processes' folder


def _warm_session(env: dict[str, str]) -> Path:
    """Start the session's warm process unless one takes commands in its folder -> the folder. A test's `trainflow
    down` stops it, or leaves it retired (no more commands) while another project's command ends; a command that
    ran in its own process meanwhile may have started the next one."""
    from flows import warm

    if "folder" not in _warm:
        _warm["folder"] = _command_folder(env)
    where = _warm["folder"]
    state = warm.ask({"op": "status"}, where, timeout=60)  # one loading answers once it has loaded
    if state and state.get("fingerprint") != where.name:  # it would refuse every command (its log says why)
        warm.ask({"op": "stop"}, where)
        state["stopping"] = True
    if state and state.get("stopping"):  # it holds the folder until its forks have ended
        deadline = time.monotonic() + 60
        while warm.ask({"op": "status"}, where, timeout=5) and time.monotonic() < deadline:
            time.sleep(0.1)
        state = None
    if state is None:
        _start_warm(where, env)
    return where


def all_cpus() -> None:
    """A `preexec_fn` for `trainflow up`: the servers it starts run on all CPUs, not on the lane's core, so that
    their boot (seconds of CPU each, two at once) uses the other core's idle time too."""
    if _ALL_CPUS:
        os.sched_setaffinity(0, _ALL_CPUS)


def _command_folder(env: dict[str, str]) -> Path:
    """The folder of the warm process a `trainflow` command with `env` uses (a command's fingerprint's: this
    process's module path is pytest's)."""
    return Path(subprocess.run([sys.executable, "-c", "from flows import warm; print(warm.folder())"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip())


def _start_warm(where: Path, env: dict[str, str]) -> subprocess.Popen:
    """A warm process in `where`, loading at once, on all CPUs (a fork runs on its command's)."""
    from flows import warm

    lane = os.sched_getaffinity(0) if _ALL_CPUS else None
    try:
        if _ALL_CPUS:
            os.sched_setaffinity(0, _ALL_CPUS)
        process = warm.start(where, env, starter=False)[1]
    finally:
        if lane:
            os.sched_setaffinity(0, lane)
    deadline = time.monotonic() + 60  # its socket, so that the next command finds it (it loads meanwhile)
    while not (where / "socket").exists() and process.poll() is None:
        assert time.monotonic() < deadline, f"the warm process did not start: {where / 'log'}"
        time.sleep(0.05)
    return process


def _loaded(where: Path) -> None:
    from flows import warm

    deadline = time.monotonic() + 180
    while not (state := warm.ask({"op": "status"}, where, timeout=60)) or not state["ready"]:
        assert time.monotonic() < deadline, f"the warm process did not load: {where / 'log'}"
        time.sleep(0.2)


def warm_ready(folder) -> dict[str, str]:
    """cli_env(folder), once the session's warm process has loaded: every command with it is a fork."""
    env = cli_env(folder)
    _loaded(_warm_session(env))
    return env


def own_warm(env: dict[str, str]) -> Path:
    """A loaded warm process for `env` alone (its own TRAINFLOW_WARM_DIR: no other test's `trainflow down` stops
    it) -> its folder; `trainflow down` with `env` stops it."""
    where = _command_folder(env)
    _start_warm(where, env)
    _loaded(where)
    return where


def warm_folder() -> Path:
    """The session's warm processes' folder (started by the first cli_env)."""
    return _warm["folder"]




def forks_in(folder) -> list[int]:
    """The warm processes' forks (flows/warm.py) working in `folder`: the processes doing the work of the `trainflow`
    commands started there that were forwarded."""
    import psutil

    found = []
    for proc in psutil.process_iter(["ppid", "cwd"]):
        try:
            if proc.info["cwd"] == str(folder) and "flows.warm_process" in " ".join(
                    psutil.Process(proc.info["ppid"]).cmdline()):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API on a temporary SQLite database, for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def home() -> str:
    return _HOME


@pytest.fixture(scope="session")
def digits() -> sources.Dataset:
    return sources.load("digits")


def listening(pid: int) -> set[str]:
    """The addresses process `pid` and its descendants listen on: their sockets, not the URLs they print (a server
    bound to 0.0.0.0 answers a connection to 127.0.0.1 too)."""
    import psutil

    root, found = psutil.Process(pid), set()
    for process in (root, *root.children(recursive=True)):
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a child that ended meanwhile
            continue
    return found


def write_images(root, per_class: int = 6, classes=("cat", "dog", "owl"), seed: int = 0):
    """A class-per-folder tree of images of mixed sizes and modes (RGB, grayscale, RGBA, palette)."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "RGBA", "P"]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(10, 40)), int(rng.integers(10, 40))
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            arr[..., c % 3] = 200  # a class-dependent color so a model can learn it
            img = Image.fromarray(arr).convert(modes[i % len(modes)])
            img.save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_root(tmp_path):
    return write_images(tmp_path / "images")


def tabular_frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(["a", "b", "c"], n)
    centers = {"a": 0.0, "b": 3.0, "c": -3.0}
    x1 = np.array([centers[v] for v in label]) + rng.normal(0, 1, n)
    return pd.DataFrame({"x1": x1, "x2": rng.normal(0, 1, n), "x3": rng.integers(0, 5, n), "label": label})


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "table.csv"
    tabular_frame().to_csv(path, index=False)
    return path


def digits_csv(path):
    """The bundled digits as a table: columns p0..p63 (the image's rows one after another) and label. Read as
    signals of data.channels=8, each channel is one row of the image over 8 steps."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)])
    frame["label"] = y
    frame.to_csv(path, index=False)
    return path


def write_idx(path, array: np.ndarray):
    """An IDX (MNIST-format) ubyte file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root, name: str = "MNIST", n_train: int = 40, n_test: int = 20):
    """MNIST-layout files with random content under root/<name>/raw (torchvision reads them offline)."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


@pytest.fixture
def small_digits(digits) -> sources.Dataset:
    """A 400-sample subset of digits, for quick training tests."""
    idx = torch.arange(400)
    return sources.Dataset(digits.inputs[idx], digits.labels[idx], digits.classes, "small", digits.value_max)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the markers given here
def pytest_collection_modifyitems(items):
    import tiers

    tiers.assign(items)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    from flows import warm

    warm.stop()
    shutil.rmtree(_HOME, ignore_errors=True)
    shutil.rmtree(_WARM, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> str:
    """A real PostgreSQL server for the session (tests/pgserver.py) -> the URL of its database `trainflow`."""
    import pgserver

    with pgserver.server() as url:
        yield url
