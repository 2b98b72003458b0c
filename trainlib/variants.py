"""Configs varied from one base, as tuning trials and comparison variants are: which keys may change, the
full grid of `--vary` values and each combination's label, and the CPU share of runs trained side by side."""

from __future__ import annotations

import itertools
from typing import Any

from trainlib.config import PipelineConfig, override
from trainlib.device import cpu_quota
from trainlib.errors import ConfigError

# Keys no trial or variant may change: all of them must see the same data, split and identity.
FIXED_PREFIXES = ("data.", "split.", "register.")


def check_keys(config: PipelineConfig, keys_and_values: dict[str, list], what: str) -> None:
    """Every key must be a config key that trials may change, and every value valid for it."""
    for key, values in keys_and_values.items():
        if key == "name" or key.startswith(FIXED_PREFIXES):
            raise ConfigError(f"{what} {key}: cannot vary; every trial uses the same data, split and name")
        for value in values:
            try:
                override(config, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"{what} {key}={value!r}: {exc}") from None


def needs_validation(config: PipelineConfig, what: str) -> None:
    """Trials and variants are scored on the validation split, never on test."""
    if config.split.val == 0:
        raise ConfigError(f"split.val: {what} scores on the validation split; it needs split.val > 0")


def share_cpus(config: PipelineConfig, parallel: int) -> PipelineConfig:
    """With `parallel` trainings at once in one process, give each its share of the CPU quota
    (unless the config sets training.threads): oversubscribed cores only slow every run down."""
    if config.training.threads or parallel <= 1:
        return config
    return override(config, {"training.threads": max(1, cpu_quota() // parallel)})


def variants(vary: dict[str, list]) -> list[dict[str, Any]]:
    """The full grid of `--vary` values: one dict of overrides per combination."""
    keys = list(vary)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(vary[k] for k in keys))]


def label(overrides: dict[str, Any]) -> str:
    """A short readable name for a variant, e.g. `optimizer.name=sgd, schedule.name=step`."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items())
