"""Ports on 127.0.0.1 for the servers the tests (and bench/) start."""

import socket


def free_port() -> int:
    """A port nothing listens on now: for a server to bind, or for a URL where no server answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
