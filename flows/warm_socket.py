"""The socket protocol between a `trainflow` command and the project's warm process (flows/warm.py says what each
side sends): newline-separated JSON objects over a Unix socket, the command's stdin, stdout and stderr passed with
the first byte of its request."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

Message = dict[str, Any]  # one JSON object of the protocol


def connect(where: Path, timeout: float | None = 5.0) -> socket.socket:
    """A connection to the warm process in `where` (OSError when none listens). The socket is named through the
    folder's descriptor: a Unix socket's path is limited to 107 bytes, a project's is not."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sock.connect(f"/proc/self/fd/{fd}/socket")
        finally:
            os.close(fd)
    except OSError:
        sock.close()
        raise
    return sock


def send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data[:1]], fds)  # the descriptors travel with the first byte
        data = data[1:]
    sock.sendall(data)


class Lines:
    """Newline-separated JSON messages from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def next(self) -> Message | None:
        """The next message, or None when the other side closed the connection."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def peek(conn: socket.socket) -> bool:
    """Whether `conn` is still open (it may be readable because the other side closed it)."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True
    except OSError:
        return False


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]
