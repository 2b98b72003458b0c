"""Rule 1 of DESIGN.md: imports point one way (deployments -> flows -> tasks -> trainlib), and trainlib never
imports prefect or mlflow, nor holds databases or file locks."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINLIB = ROOT / "trainlib"
LAYERS = ["deployments", "flows", "tasks", "trainlib"]  # each imports only the layers after it


def imported(folder: Path) -> list[tuple[str, str]]:
    """(file, top-level module) of every import statement under `folder`, also those inside functions."""
    out = []
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            out += [(str(file.relative_to(ROOT)), n.split(".")[0]) for n in names]
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_one_way(layer):
    above = set(LAYERS[:LAYERS.index(layer)])
    assert [f"{file}: {name}" for file, name in imported(ROOT / layer) if name in above] == []


def test_trainlib_holds_no_database_connections_or_file_locks():
    # study storages, their locks and heartbeats are the orchestrating layer's (tasks/studies.py)
    assert [f"{file}: {name}" for file, name in imported(TRAINLIB) if name in {"sqlalchemy", "fcntl"}] == []


def test_no_prefect_or_mlflow_import_statements():
    offenders = []
    for file in TRAINLIB.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{file.name}: {n}" for n in names if n.split(".")[0] in {"prefect", "mlflow"}]
    assert offenders == []


def test_importing_every_trainlib_module_loads_neither():
    modules = sorted(".".join(p.relative_to(TRAINLIB.parent).with_suffix("").parts)
                     for p in TRAINLIB.rglob("*.py") if p.name != "__init__.py")
    assert len(modules) > 10
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
