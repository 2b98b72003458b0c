"""Prefect flows (wiring only) and the `trainflow` CLI."""

import os

import tasks  # noqa: F401  - applies the local, offline defaults before prefect/mlflow load

SERVED_BY = "TRAINFLOW_SERVED_BY"  # `trainflow serve` sets its pid here for the flow-run processes it starts

# A flow run `trainflow serve` started ends with it, SIGKILL too. The variable is taken out here: the flow run's own
# processes (ranks, workers) are not serve's children.
_served_by = os.environ.pop(SERVED_BY, None)
if _served_by is not None:
    if _served_by == str(os.getppid()):
        from flows.processes import die_with_parent

        die_with_parent()
    if str(os.getppid()) != _served_by:  # serve ended before this flow run got here: end as its SIGTERM would
        os._exit(143)
