"""Credentials in URLs (postgresql://user:password@host, https://user:token@host) are never recorded or
printed: `redact` replaces the password part with ***."""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
