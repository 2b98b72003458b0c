"""Prefect tasks: one thin module per pipeline stage, each wrapping trainlib and logging to MLflow."""

from tasks import settings

settings.apply_defaults()  # before prefect or mlflow is imported anywhere
settings.quiet_input_errors()
