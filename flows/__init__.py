"""Prefect flows (wiring only) and the `trainflow` CLI."""

import tasks  # noqa: F401  - applies the local, offline defaults before prefect/mlflow load
