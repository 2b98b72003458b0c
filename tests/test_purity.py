"""Rule 1 of DESIGN.md: trainlib never imports prefect or mlflow."""

import ast
import subprocess
import sys
from pathlib import Path

TRAINLIB = Path(__file__).resolve().parents[1] / "trainlib"


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
