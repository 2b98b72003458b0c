"""The options several commands share, each defined once (its flags, type, default and help), and the argparse
types of the command line. A command adds the ones it takes with `add`, changing a help text or a default where
its meaning there is narrower."""

from __future__ import annotations

import argparse
from typing import Any

from flows.runners import CHOICES as RUNNERS


def key_value(text: str) -> str:
    """argparse type of --set: one word KEY=VALUE (`--set optimizer.lr 0.01` would leave 0.01 unparsed)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE as one word, e.g. --set optimizer.lr=0.01 (got {text!r})")
    return text


def positive(text: str) -> int:
    """argparse type of a count: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def port(text: str) -> int:
    """argparse type of a port to listen on: 1 to 65535 (0 would be any port, and the printed URL wrong)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


SHARED: dict[str, dict[str, Any]] = {
    "--config": {"metavar": "FILE", "help": "pipeline config YAML"},
    "--set": {"action": "append", "type": key_value, "metavar": "KEY=VALUE",
              "help": "override a config key (repeatable)"},
    "--name": {"help": "experiment and registered-model name (the config's `name`)"},
    "--no-register": {"action": "store_true", "help": "register nothing: no model version, no alias moved; the run "
                      "and its model are still recorded (register.enabled=false)"},
    "--refresh": {"action": "store_true", "help": "recompute ingest/split/normalize (skip their cache)"},
    "--json": {"action": "store_true", "help": "print one JSON summary on stdout, nothing else"},
    "--runner": {"metavar": "R", "help": f"where trainings run: {RUNNERS} (default thread: this process's threads; "
                 "dask: a local Dask cluster)"},
    "--max-parallel": {"type": positive, "default": 2, "help": "trainings at once (default 2)"},
    "--repeats": {"type": positive, "default": 1, "metavar": "N", "help": "repeats of every variant (default 1)"},
    "--resplit": {"action": "store_true", "help": "repeat i also on split.seed + i"},
    "--host": {"default": "127.0.0.1", "help": "interface to bind (default 127.0.0.1: this machine only)"},
    "--port": {"type": port, "help": "port to listen on"},
    "--alias": {"help": "the alias"},
    "--reason": {"help": "why, in words: kept in the alias history"},
}


def add(parser: argparse.ArgumentParser, *flags: str, **changes: dict[str, Any]) -> None:
    """Add the shared options `flags` to a command's parser; `changes`, by the option's dest (`max_parallel`),
    replace some of its settings there, e.g. `add(p, "--port", port={"default": 5002})`."""
    unknown = set(changes) - {f.lstrip("-").replace("-", "_") for f in flags}
    assert not unknown, f"changes for options not added: {unknown}"
    for flag in flags:
        parser.add_argument(flag, **SHARED[flag] | changes.get(flag.lstrip("-").replace("-", "_"), {}))


def overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, then those of --name and --no-register (so the flags win over a --set)."""
    out = [*(args.set or [])]
    if getattr(args, "name", None):
        out.append(f"name={args.name}")
    if getattr(args, "no_register", False):
        out.append("register.enabled=false")
    return out
