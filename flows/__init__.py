"""Prefect flows (wiring only) and the `trainflow` CLI."""

import os

import tasks  # noqa: F401  - applies the local, offline defaults before prefect/mlflow load

SERVED_BY = "TRAINFLOW_SERVED_BY"  # `trainflow serve` sets its pid here for the flow-run processes it starts

if os.environ.get(SERVED_BY) == str(os.getppid()):  # a flow run `trainflow serve` started ends with it, SIGKILL too
    from flows.processes import die_with_parent

    die_with_parent()
    if str(os.getppid()) != os.environ[SERVED_BY]:  # it ended before the line above
        os._exit(143)
