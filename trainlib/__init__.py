"""trainlib: the pure-PyTorch training library behind trainflow (no Prefect, no MLflow)."""

__version__ = "0.1.0"
