"""Tuning: where Optuna studies live and are shared, the tuning report."""
