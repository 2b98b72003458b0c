"""What the warm process (flows/warm_process.py) loads before its first fork: every trainflow module (and with them
torch, Prefect, MLflow and the rest), the modules its forks learned to need (`preload`), and the first-use costs
every command would otherwise pay."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from pathlib import Path

from flows import warm

# Set while loading unless the user set them (they are fingerprinted): pyarrow's jemalloc starts no thread of its
# own, so that a fork inherits no lock another thread holds (NumPy's and SciPy's OpenBLAS pools stop at a fork).
WHILE_LOADING = {"JE_ARROW_MALLOC_CONF": "background_thread:false"}


def our_modules() -> list[str]:
    """Every module of trainflow's packages (importing them imports torch, Prefect, MLflow and the rest)."""
    names = []
    for package in warm.OURS:
        spec = importlib.util.find_spec(package)
        for root in spec.submodule_search_locations or []:
            for path in sorted(Path(root).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                names.append(".".join([package, *parts[:-1]] if parts[-1] == "__init__" else [package, *parts]))
    return [n for n in names if n != "flows.warm_process" and not n.endswith("__main__")]


def listed(path: Path) -> list[str]:
    """The module names in a `preload` or `learned/<pid>` file."""
    with contextlib.suppress(OSError):
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return []


def first_uses() -> None:
    """MLflow's map of installed packages (filled at every process's first logged model) and the first export."""
    with contextlib.suppress(Exception):
        from mlflow.utils import requirements_utils

        requirements_utils._init_packages_to_modules_map()
    _first_export()


def _first_export() -> None:
    """What every process pays at its first model export (torch.export's tracing machinery, made ready on first use:
    1.4 s of a forked one-epoch run's 2.8 s here), paid once here: a small cnn exported, saved and loaded back.
    Tracing runs no kernel, so no thread pool starts; nor may this call torch.set_num_threads, which makes torch's
    pool, and a fork's own call would then fail ("Invalid thread pool")."""
    import io

    import torch

    from trainlib.models import build

    try:  # as MLflow exports a logged model: the batch dimension dynamic
        program = torch.export.export(build("cnn", (1, 8, 8), 2).eval(), (torch.zeros(2, 1, 8, 8),),
                                      dynamic_shapes=({0: torch.export.Dim.AUTO},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        torch.export.load(buffer)
    except Exception as exc:  # noqa: BLE001 - a warm-up: the forks pay it themselves then
        print(f"no export warm-up ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
    if threading.active_count() > 1:
        raise SystemExit("the export warm-up started a thread: a fork would not be safe; ending")
