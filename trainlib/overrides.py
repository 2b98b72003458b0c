"""Text a user types: `--set key=value`, `--vary key=v1,v2` and `--member 'key=value ...'` items (values read
as YAML) and YAML files, turned into plain dicts with readable errors. Validation against the config models
is trainlib.config's."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from trainlib.errors import ConfigError

URI_PREFIXES = ("models:/", "runs:/")  # a registered model or a run's, as MLflow names them


def set_key(raw: dict, key: str, value: Any) -> None:
    """Put `value` at dotted `key` in the nested dict `raw`, creating sections on the way."""
    node = raw
    *parents, leaf = key.split(".")
    if not all([*parents, leaf]):
        raise ConfigError(f"config key {key!r}: empty name between dots (keys look like optimizer.lr)")
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[:i + 1])} is a value, not a section: cannot set {key}")
        node = child
    node[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value), the value read as YAML (numbers, booleans, lists, null)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optimizer.lr=0.01")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def parse_vary(item: str) -> tuple[str, list[Any]]:
    """`key=v1,v2,...` -> (key, [values]), each value read as YAML; commas inside [] stay in a value."""
    key, sep, text = item.partition("=")
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if not sep or not key.strip() or not any(p.strip() for p in parts):
        raise ConfigError(f"--vary {item!r}: expected key=value1,value2,..., e.g. optimizer.name=sgd,adam")
    return key.strip(), [parse_set(f"{key}={p}")[1] for p in parts if p.strip()]


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping from a file, with a readable error for a missing file or bad YAML."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} not found: {file}")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping of config sections, got {type(raw).__name__}")
    return raw


def parse_member(text: str) -> str | dict[str, Any]:
    """A `--member` value: a registered model URI or a config YAML path (kept as given), or space-separated
    `key=value` overrides of the base config, e.g. `model.name=cnn optimizer.name=sgd`."""
    if text.startswith(URI_PREFIXES) or text.endswith((".yaml", ".yml")):
        return text
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--member {text!r}: {exc}") from None
    if not items:
        raise ConfigError("--member: empty; give key=value overrides, a config YAML or models:/name@alias")
    return dict(parse_set(item) for item in items)


def parse_margin(text: str) -> tuple[str, float]:
    """`--margin test_accuracy=0.005` -> ("test_accuracy", 0.005)."""
    key, _, value = text.partition("=")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise ConfigError(f"--margin {text}: expected MEASURE=NUMBER, e.g. test_accuracy=0.005") from None
