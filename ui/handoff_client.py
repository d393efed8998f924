"""The thin `airlock run`: hands the request to a running supervisor (see app/handoff.py).

Standard library only, so that starting an agent from the command line costs an interpreter
start and a socket, not the import of the whole core.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">cI")  # the same framing as app/handoff.py


class HandoffRefused(Exception):
    """The supervisor refused the request; the message is for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def connect(path: Path) -> socket.socket | None:
    """A connection to the running supervisor, or None when there is none."""
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the supervisor went away")
        data += chunk
    return bytes(data)


def run(sock: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
    """Streams the session's output to this terminal; returns the end frame's data."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sock.sendall(json.dumps(dict(request, op="run")).encode() + b"\n")
        while True:
            kind, size = HEADER.unpack(_read_exact(sock, HEADER.size))
            payload = _read_exact(sock, size)
            if kind in (b"O", b"E"):
                target = sys.stdout.buffer if kind == b"O" else sys.stderr.buffer
                target.write(payload)
                target.flush()
            elif kind == b"N":
                print(f"airlock: {payload.decode(errors='replace')}", file=sys.stderr,
                      flush=True)
            elif kind == b"X":
                return dict(json.loads(payload))
            elif kind == b"R":
                refusal = json.loads(payload)
                raise HandoffRefused(str(refusal["error"]), int(refusal.get("exit", 2)))
    finally:
        signal.signal(signal.SIGINT, previous)
        sock.close()

