"""The local stack: a Prefect server and an MLflow tracking server, started in the background on
127.0.0.1, serving the project's own stores (tasks/settings.py), the ones local runs write:

    .trainflow/mlflow.db       MLflow runs and registry      .trainflow/mlartifacts/  their artifacts
    .trainflow/prefect/        Prefect's home: prefect.db (flow runs), logs
    .trainflow/stack/          the servers' pid files and logs, and `env`

So every run is visible in both UIs however it was started, and `models:/NAME@ALIAS` names one model.
MLflow does not serve the artifacts: clients on this machine read and write them in
`.trainflow/mlartifacts` directly, as local runs do (an `mlflow-artifacts:/` location, which served
artifacts give new experiments, is one a later local run could not write to). On PostgreSQL
(`--postgres`, `--mlflow-backend`, `--prefect-database`: servers other machines use) the databases are
the given ones and MLflow serves the artifacts from `.trainflow/stack/mlartifacts`.

`up` waits until both answer their health checks and writes `.trainflow/stack/env` (`PREFECT_API_URL`,
`MLFLOW_TRACKING_URI`): while the servers run, trainflow commands in the project use them without it
(tasks/settings.py `running_stack`); other tools and shells `source` it. `down` stops them; `status` reports.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks import settings
from trainlib.errors import ConfigError, TrainflowError
from trainlib.redact import redact

STACK = settings.STACK
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Service:
    name: str
    url: str  # what clients point at
    health: str  # answers 200 when the server is up
    command: list[str]
    env: dict[str, str]

    @property
    def pid_file(self) -> Path:
        return STACK / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return STACK / f"{self.name}.log"


def services(host: str = "127.0.0.1", prefect_port: int = 4200, mlflow_port: int = 5001,
             prefect_database: str | None = None, mlflow_backend: str | None = None) -> list[Service]:
    """The two servers: Prefect (its UI and API) and MLflow (tracking, registry; artifacts served only on a
    given backend). By default both serve the project's local stores."""
    prefect_env = {"PREFECT_HOME": str(settings.prefect_home()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   # the UI's calls go where the server listens, not to the default port
                   "PREFECT_UI_API_URL": f"http://{host}:{prefect_port}/api",
                   **({"PREFECT_API_DATABASE_CONNECTION_URL": prefect_database} if prefect_database else {})}
    # the backend URL goes by the environment, not the command line, where `ps` would show its password
    mlflow_env = {"MLFLOW_BACKEND_STORE_URI": mlflow_backend or settings.local_tracking_uri(),
                  # MLflow's job execution (a job runner and 7 huey worker processes, about 1.7 GB) runs its GenAI
                  # evaluation jobs; nothing here uses them
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if mlflow_backend:  # a server other machines may use: it serves the artifacts
        artifacts = ["--serve-artifacts", "--artifacts-destination", str(STACK / "mlartifacts")]
    else:  # the local store: artifacts where local runs keep them, read and written directly
        artifacts = ["--no-serve-artifacts", "--default-artifact-root", str(settings.local_artifact_root())]
    return [
        Service("prefect", f"http://{host}:{prefect_port}/api", f"http://{host}:{prefect_port}/api/health",
                [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)], prefect_env),
        Service("mlflow", f"http://{host}:{mlflow_port}", f"http://{host}:{mlflow_port}/health",
                [str(BIN / "mlflow"), "server", "--host", host, "--port", str(mlflow_port), "--workers", "1",
                 *artifacts], mlflow_env),
    ]


def postgres_databases(url: str) -> dict[str, str]:
    """Prefect's and MLflow's databases on the PostgreSQL server of `url` (whose own database is left to
    tuning studies): `<db>_prefect` and `<db>_mlflow`, created when missing. -> {"prefect_database": its URL
    (asyncpg driver), "mlflow_backend": its URL}."""
    import sqlalchemy

    try:
        base = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"--postgres {redact(url)}: not a database URL (postgresql://user:password@host/db)") \
            from None
    if base.get_backend_name() != "postgresql" or not base.database:
        raise ConfigError(f"--postgres {redact(url)}: give a PostgreSQL URL with a database, "
                          "postgresql://user:password@host:5432/trainflow")
    # SQLAlchemy hands the query to Prefect's driver, asyncpg, as keyword arguments: one it does not take
    # would stop Prefect's server at start. libpq's sslmode is its `ssl` (translated below).
    import asyncpg

    taken = set(inspect.signature(asyncpg.connect).parameters) | {"sslmode"}
    if untaken := sorted(set(base.query) - taken):
        raise ConfigError(f"--postgres {redact(url)}: {', '.join(untaken)} cannot be passed on to Prefect's "
                          "server (its driver, asyncpg, has no such setting); use --prefect-database and "
                          "--mlflow-backend with the settings each driver takes")
    names = {"prefect_database": f"{base.database}_prefect", "mlflow_backend": f"{base.database}_mlflow"}
    if any(len(name.encode()) > 63 for name in names.values()):  # PostgreSQL cuts longer names: they would clash
        raise ConfigError(f"--postgres {redact(url)}: the database name {base.database!r} is too long for "
                          "<db>_prefect and <db>_mlflow (63 bytes at most); choose a shorter one")
    engine = sqlalchemy.create_engine(base.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT",
                                      poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as db:
            for name in names.values():
                if db.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                    continue
                db.execute(sqlalchemy.text(f"CREATE DATABASE {db.dialect.identifier_preparer.quote(name)}"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = redact(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
        raise ConfigError(f"--postgres {redact(url)}: cannot prepare Prefect's and MLflow's databases ({reason})") \
            from None
    finally:
        engine.dispose()
    query = dict(base.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    prefect = base.set(drivername="postgresql+asyncpg", database=names["prefect_database"], query=query)
    mlflow = base.set(drivername="postgresql", database=names["mlflow_backend"])
    return {"prefect_database": prefect.render_as_string(hide_password=False),
            "mlflow_backend": mlflow.render_as_string(hide_password=False)}


def _running(service: Service) -> tuple[int, str, str] | None:
    """(process id, URL, health URL) of the service as started, if it is running."""
    try:
        pid, url, health = service.pid_file.read_text().split()
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return None
    with contextlib.suppress(ChildProcessError):  # started by this process: an exited child is a zombie
        if os.waitpid(int(pid), os.WNOHANG)[0]:
            return None
    return int(pid), url, health


def _healthy(url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    return False


def _port_free(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def _start(service: Service) -> None:
    if not _port_free(service.url):
        raise ConfigError(f"{service.name}: port of {service.url} is already in use by another program; choose "
                          "another with --prefect-port / --mlflow-port")
    STACK.mkdir(parents=True, exist_ok=True)
    with open(service.log_file, "ab") as log:
        process = subprocess.Popen(service.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **service.env}, start_new_session=True)
    service.pid_file.write_text(f"{process.pid} {service.url} {service.health}\n")


def up(timeout: float = 120, **options) -> dict[str, str]:
    """Start whatever of the stack is not running (a running server keeps its address), wait until every
    server is healthy, write the env file. -> {service name: URL}. On failure, stops what it started."""
    started, new = {}, []
    try:
        for service in services(**options):
            running = _running(service)
            if running is None:
                _start(service)
                new.append(service)
            _, url, health = running or (None, service.url, service.health)
            started[service.name] = (service, url, health)
        deadline = time.monotonic() + timeout
        for service, _, health in started.values():
            _wait_healthy(service, health, deadline, timeout)
    except BaseException:
        _stop([running[0] for service in new if (running := _running(service)) is not None], timeout=10)
        for service in new:
            service.pid_file.unlink(missing_ok=True)
        raise
    urls = {name: url for name, (_, url, _) in started.items()}
    env_file().write_text(f"export PREFECT_API_URL={urls['prefect']}\nexport MLFLOW_TRACKING_URI={urls['mlflow']}\n")
    return urls


def _wait_healthy(service: Service, health: str, deadline: float, timeout: float) -> None:
    while not _healthy(health):
        if _running(service) is None:
            raise TrainflowError(f"{service.name} server exited while starting; its log: {service.log_file}")
        if time.monotonic() > deadline:
            raise TrainflowError(f"{service.name} server not healthy at {health} after {timeout:.0f} s; its log: "
                                 f"{service.log_file}")
        time.sleep(0.5)


def down(timeout: float = 30) -> list[str]:
    """Stop the stack's servers (their whole process groups). -> names of the servers stopped."""
    running = [(service, _running(service)) for service in services()]
    _stop([r[0] for _, r in running if r is not None], timeout)
    for service, _ in running:
        service.pid_file.unlink(missing_ok=True)
    env_file().unlink(missing_ok=True)
    return [service.name for service, r in running if r is not None]


def _stop(pids: list[int], timeout: float) -> None:
    """Stop servers and every process they started: their process groups (each was started as a session leader,
    and its workers stay in its group), all told at once. SIGTERM, then SIGKILL for whatever is left after
    `timeout` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    left, deadline = set(pids), time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            try:
                os.killpg(pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                left.discard(pid)
        if left:
            time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class ServerState:
    """A server of the stack as `trainflow status` shows it."""

    name: str  # prefect | mlflow
    pid: int | None  # None when stopped
    url: str | None
    healthy: bool
    log: str


def status() -> list[ServerState]:
    """Each server: process id (None when stopped), URL, healthy, log file."""
    out = []
    for service in services():
        pid, url, health = _running(service) or (None, None, None)
        out.append(ServerState(service.name, pid, url, bool(health and _healthy(health)), str(service.log_file)))
    return out


def env_file() -> Path:
    return STACK / "env"


def older_stores() -> list[Path]:
    """The stack's own stores of trainflow versions before it served the project's: kept, never read."""
    return [path for path in (STACK / "mlflow.db", STACK / "prefect" / "prefect.db") if path.exists()]
