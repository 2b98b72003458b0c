"""How a command finds its project's `.trainflow/` (tasks/settings.py `find_home`), and when it uses the
project's running stack (`running_stack`). Real folders and real processes; no server."""

import os
import subprocess
import sys

import pytest

from tasks import settings


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A repository root (`.git`) with nested folders; TRAINFLOW_HOME unset, as for a user who never set it."""
    monkeypatch.delenv("TRAINFLOW_HOME", raising=False)
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "configs" / "search").mkdir(parents=True)
    return tmp_path / "repo"


def test_a_new_project_is_the_repository_root(tree):
    assert settings.find_home(tree / "configs" / "search") == tree / ".trainflow"
    assert settings.find_home(tree) == tree / ".trainflow"


def test_the_nearest_trainflow_folder_wins(tree):
    (tree / "configs" / ".trainflow").mkdir()  # made by an earlier run from configs/
    assert settings.find_home(tree / "configs" / "search") == tree / "configs" / ".trainflow"
    assert settings.find_home(tree) == tree / ".trainflow"


def test_a_trainflow_folder_above_a_repository_does_not_capture_it(tree):
    (tree.parent / ".trainflow").mkdir()  # say a stray one in the home folder
    assert settings.find_home(tree / "configs") == tree / ".trainflow"


def test_a_worktree_whose_git_is_a_file_is_a_project(tree):
    worktree = tree / "configs" / "search"
    (worktree / ".git").write_text("gitdir: ../../.git/worktrees/search\n")
    assert settings.find_home(worktree) == worktree / ".trainflow"


def test_trainflow_home_names_the_folder_itself(tree, monkeypatch):
    monkeypatch.setenv("TRAINFLOW_HOME", str(tree / "elsewhere"))
    assert settings.find_home(tree / "configs") == tree / "elsewhere"


def test_importing_creates_no_folder(tree):
    env = {k: v for k, v in os.environ.items() if k != "TRAINFLOW_HOME" and not k.startswith(("PREFECT_", "MLFLOW_"))}
    out = subprocess.run([sys.executable, "-c", "import tasks, cli.main, cli.training; "
                          "from tasks import settings; print(settings.HOME)"],
                         cwd=tree / "configs", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tree / ".trainflow")
    assert not (tree / ".trainflow").exists()


@pytest.fixture
def stack_files(tmp_path, monkeypatch):
    """The files `trainflow up` writes, in a stack folder of this test's own."""
    monkeypatch.setattr(settings, "STACK", tmp_path / "stack")
    settings.STACK.mkdir()
    (settings.STACK / "env").write_text("export PREFECT_API_URL=http://127.0.0.1:4242/api\n"
                                        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5151\n")
    return settings.STACK


def _exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_running_stack_is_used(stack_files):
    for name in ("prefect", "mlflow"):
        (stack_files / f"{name}.pid").write_text(f"{os.getpid()} http://x http://x/health\n")
    assert settings.running_stack() == {"PREFECT_API_URL": "http://127.0.0.1:4242/api",
                                        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5151"}


@pytest.mark.parametrize("dead", ["prefect", "mlflow"])
def test_a_stale_env_file_is_ignored(stack_files, dead):
    for name in ("prefect", "mlflow"):
        pid = _exited_pid() if name == dead else os.getpid()
        (stack_files / f"{name}.pid").write_text(f"{pid} http://x http://x/health\n")
    assert settings.running_stack() == {}


def test_no_stack_files_no_stack(stack_files):
    assert settings.running_stack() == {}  # an env file without pid files: `down` was interrupted
