"""One registry per choice: a name -> builder dict whose unknown names fail by listing the valid ones."""

from __future__ import annotations

from difflib import get_close_matches
from typing import TypeVar

from trainlib.errors import ConfigError

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, valid) -> str:
    """`unknown model 'cnnn'; valid: cnn, mlp, resnet18 (did you mean 'cnn'?)`."""
    names = sorted(valid)
    message = f"unknown {kind} {name!r}; valid: {', '.join(names)}"
    close = get_close_matches(str(name), names, n=1)
    return message + (f" (did you mean {close[0]!r}?)" if close else "")


class Registry(dict[str, T]):
    """A plain dict of name -> builder; `registry[name]` on an unknown name raises ConfigError."""

    def __init__(self, kind: str, entries: dict[str, T]):
        super().__init__(entries)
        self.kind = kind

    def __missing__(self, name: str) -> T:
        raise ConfigError(unknown_name_message(self.kind, name, self))

    def check(self, name: str) -> str:
        """Return `name` if registered, else raise the listing error (for config validators)."""
        self[name]
        return name
