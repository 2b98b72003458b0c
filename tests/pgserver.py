"""A real PostgreSQL server for the tests: Debian's postgresql binaries, a fresh cluster in a temporary folder,
listening on 127.0.0.1 at a free port, with a password login (so that redaction is exercised too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ports import free_port

USER, PASSWORD, DATABASE = "trainer", "s3cret-pw", "trainflow"


def _bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make test` installs Debian's postgresql package")
    return found[-1].parent


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A running server for the block -> the URL of its database `trainflow` (user and password in it)."""
    bindir, root = _bin(), Path(tempfile.mkdtemp(prefix="trainflow-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text(PASSWORD)
    if as_postgres:
        shutil.chown(root / "pw", "postgres", "postgres")
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run([*as_postgres, bindir / "initdb", "-D", root / "data", "-U", USER, "--auth=scram-sha-256",
                    f"--pwfile={root / 'pw'}"], **run)
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed with the server
    process = subprocess.Popen([*as_postgres, bindir / "postgres", "-D", root / "data", "-p", str(port), "-k", root,
                                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        deadline = time.monotonic() + 60
        while subprocess.run([bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True,
                             timeout=10).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()
            time.sleep(0.2)
        subprocess.run([bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE], env=env,
                       **run)
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
