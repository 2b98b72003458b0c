"""The README stays true: it opens with the two commands and documents every config key; docs/architecture.md
names every module of the code and no other."""

import json
import os
import re
from pathlib import Path

from trainlib.config import reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAPPED = ("cli", "deployments", "flows", "tasks", "trainlib", "bench")  # the folders of code docs/architecture.md maps


def test_the_architecture_map_names_every_module_and_only_those():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(rf"`((?:{'|'.join(MAPPED)})/[\w/]+\.py)`", text))
    modules = {str(p.relative_to(ROOT)) for folder in MAPPED for p in (ROOT / folder).rglob("*.py")
               if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules docs/architecture.md does not name"
    assert sorted(named - modules) == [], "modules docs/architecture.md names that do not exist"


def test_readme_opens_with_the_two_commands():
    block = README.split("```")[1]
    assert "make run" in block and "make test" in block


def reference_rows() -> list[str]:
    """The README's config table, row by row, as the code defines it."""
    rows = []
    for key, default, description in reference():
        if isinstance(default, list | tuple):
            default = json.dumps(list(default))
        elif default is None or isinstance(default, bool):
            default = json.dumps(default)
        rows.append(f"| `{key}` | `{default}` | {description.replace('|', chr(92) + '|')} |")
    return rows


def test_readme_config_reference_matches_the_code():
    stale = [row for row in reference_rows() if row not in README]
    assert stale == [], "regenerate the table with tests/test_docs.py:reference_rows()"


def test_configs_named_in_the_readme_exist():
    import re

    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"configs/[\w./-]+\.(?:yaml|csv)", README))
    assert named and all((root / path).exists() for path in named), named


def quickstart() -> list[str]:
    """The README's first code block, line by line: the quickstart."""
    return README.split("```")[1].strip("\n").splitlines()


def test_the_quickstart_is_short_and_covers_the_first_hour():
    prose = README.split("```")[2].strip().split("\n\n")[0]  # the paragraph after the block
    assert len(quickstart()) + len(prose.splitlines()) <= 17
    block = "\n".join(quickstart())
    for what in ("make run", "trainflow card digits-cnn@champion", "trainflow rerun models:/digits-cnn@champion",
                 "trainflow ui &", "kill %1", 'set_tracking_uri("sqlite:///.trainflow/mlflow.db")',
                 'load_model("models:/digits-cnn@champion")', "make test"):
        assert what in block, what


def test_the_quickstart_runs_as_written(tmp_path):
    """Every line of the quickstart but `make test` (the suite itself), in a fresh copy of the project, in bash.
    Only waits are added: for the UI's port after it starts, and for it to end after `kill %1`."""
    import shutil
    import socket
    import subprocess

    root = Path(__file__).resolve().parents[1]
    installed = root / ".venv" / ".installed"
    # the copy shares this checkout's .venv: were it out of date, the copy's `make run` would reinstall the project
    # into it from the copy (its console script and editable install pointing at a folder about to be deleted)
    assert installed.exists() and installed.stat().st_mtime >= (root / "pyproject.toml").stat().st_mtime, (
        "pyproject.toml is newer than .venv/.installed: run `make test` (it installs first), not pytest alone")
    project = tmp_path / "project"
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, project / name)  # mtimes kept: make sees .venv as up to date
    (project / ".venv").symlink_to(root / ".venv")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)  # a clone: the project's root for trainflow
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 5000)) != 0, "port 5000 (the UI's) is taken: the quickstart needs it"
    wait_up = "for i in $(seq 600); do (echo > /dev/tcp/127.0.0.1/5000) 2>/dev/null && break; sleep 0.2; done"
    script = []
    for line in quickstart():
        if line.startswith("make test"):
            continue
        script.append(line)
        if line.split("#")[0].rstrip().endswith("&"):
            script.append(wait_up)
        if line.startswith("kill %1"):
            script.append('wait %1; echo "ui exited $?"')
    env = {k: v for k, v in os.environ.items() if k != "TRAINFLOW_HOME" and not k.startswith(("PREFECT_", "MLFLOW_"))}
    out = subprocess.run(["bash", "-c", "\n".join(script)], cwd=project, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    # a server stopped is a server done (flows/processes.py): exit code 0, `stopped (SIGTERM)` on stderr
    assert "promoted to @champion" in out.stdout and "ui exited 0" in out.stdout, out.stdout + out.stderr
    assert "# Model card: digits-cnn version 1\n" in out.stdout and "when the version held @champion" in out.stdout
    assert "reproduced exactly" in out.stdout, out.stdout  # the default run, trained again from its record
    assert "stopped (SIGTERM)" in out.stderr, out.stderr
    assert out.stdout.rstrip().endswith("[0 1 2 3 4]"), out.stdout  # the champion read five digits right
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 5000)) != 0  # the UI is gone
    assert (project / ".trainflow" / "mlflow.db").is_file() and not (project / "mlflow.db").exists()


def test_your_own_data_runs_as_written(tmp_path):
    """The README's "Your own data" commands, in bash, in a fresh project beside this checkout's configs/ and .venv:
    each kind trains at the first try, under the name its data gives it."""
    import subprocess

    from conftest import cli_env

    block = README.split("## Your own data")[1].split("```")[1].strip("\n")
    project = tmp_path / "project"
    project.mkdir()
    for shared in ("configs", ".venv"):
        (project / shared).symlink_to(ROOT / shared)
    out = subprocess.run(["bash", "-ec", block], cwd=project, env=cli_env(project), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "wine-mlp: mlp, adam at lr 0.001, schedule none, on csv wine.csv (target column 'target')" in out.stderr
    for name in ("wine-mlp", "digits-png-cnn", "waves-cnn1d"):
        assert f"registered {name} version 1: " in out.stdout, out.stdout
