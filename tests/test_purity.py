"""Rule 1 of DESIGN.md: imports point one way (cli -> deployments -> flows -> tasks -> trainlib), and trainlib never
imports prefect or mlflow, nor holds databases or file locks; no private name crosses a module; the command line
defines a shared option once."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINLIB = ROOT / "trainlib"
LAYERS = ["cli", "deployments", "flows", "tasks", "trainlib"]  # each imports only the layers after it


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
    # study storages, their locks and heartbeats are the orchestrating layer's (tasks/tuning/storage.py)
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


def _modules_of_ours() -> list[Path]:
    return [p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")]


def test_no_private_name_crosses_a_module():
    """A name with a leading underscore is its module's own: no other module imports it or reads it through the
    module (`from flows.x import _y`, `x._y`)."""
    ours, crossings = set(LAYERS), []
    for file in _modules_of_ours():
        tree, modules = ast.parse(file.read_text()), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours:
                crossings += [f"{file.relative_to(ROOT)}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
                modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in ours}
        crossings += [f"{file.relative_to(ROOT)}: {ast.unparse(n)}" for n in ast.walk(tree)
                      if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
                      and isinstance(n.value, ast.Name | ast.Attribute)
                      and ast.unparse(n.value).split(".")[0] in modules]
    assert crossings == []


def test_an_option_several_commands_take_is_defined_once():
    """cli/options.py SHARED defines every option two commands take; `add_argument` declares only a command's own."""
    from cli.options import SHARED

    declared: dict[str, int] = {}
    for file in (ROOT / "cli").rglob("*.py"):
        for n in ast.walk(ast.parse(file.read_text())):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument"
                    and n.args and isinstance(n.args[0], ast.Constant) and str(n.args[0].value).startswith("--")):
                declared[n.args[0].value] = declared.get(n.args[0].value, 0) + 1
    # `--only` names different things: study's entries (NAME,...) and serve's deployments (NAME ...)
    assert {flag: count for flag, count in declared.items() if (count > 1 and flag != "--only") or flag in SHARED} == {}
    assert {"--config", "--set", "--json"} <= set(SHARED)
