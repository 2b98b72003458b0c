"""`python -m flows.engine`: the process a Prefect worker starts for each of trainflow's flow runs (the work pool's
command in deployments/prefect.yaml, set by `launcher` when `prefect deploy` runs).

When the project's warm process is ready for this environment (flows/warm.py), the flow run runs as a fork of it
and skips what each flow run's process otherwise pays before its flow starts: the interpreter, importing torch,
Prefect and MLflow and the flow's modules, the first model export's set-up (about 6 s of CPU here). Otherwise it
runs here, as Prefect's own `python -m prefect.engine` does. A warm process still loading is not waited for, and
none is started: a worker's runs are often hours apart, longer than a warm process waits idle.

Nothing here imports more than flows/warm.py does until the flow run runs here.
"""

from __future__ import annotations

import runpy
import shlex
import sys

from flows import warm

StepOutputs = dict[str, str]  # what a Prefect deploy step returns: its outputs, templated as {{ step-id.key }}


def main() -> None:
    forwarded = warm.forward_flow_run(sys.argv[1:])
    if forwarded is not None:
        sys.exit(forwarded)
    run_here(sys.argv[1:])


def run_here(argv: list[str]) -> None:
    """Prefect's engine for the flow run named by PREFECT__FLOW_RUN_ID (or the first argument), in this process, as
    `python -m prefect.engine` runs it; its exit is SystemExit, or a return (0)."""
    sys.argv = [sys.argv[0], *argv]
    loaded = sys.modules.pop("prefect.engine", None)  # run as __main__, not as the module a package imported
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    finally:
        if loaded is not None:
            sys.modules["prefect.engine"] = loaded


def launcher() -> StepOutputs:
    """A `prefect deploy` build step (deployments/prefect.yaml): the command that starts a flow run's process,
    with the interpreter that deploys (the project's), as a step's outputs (the form Prefect templates)."""
    return {"command": f"{shlex.quote(sys.executable)} -m flows.engine"}


if __name__ == "__main__":
    main()
