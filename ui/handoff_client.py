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

from ui.terminal import TerminalFilter, reclaim

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
    """Streams the session's output to this terminal; returns the end frame's data. On a
    terminal the agent's output is filtered (ui/terminal.py) and Airlock's notices start from
    a known state, as with a session supervised here."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    screen = TerminalFilter()
    terminal = {b"O": sys.stdout.isatty(), b"E": sys.stderr.isatty()}
    try:
        sock.sendall(json.dumps(dict(request, op="run")).encode() + b"\n")
        while True:
            kind, size = HEADER.unpack(_read_exact(sock, HEADER.size))
            payload = _read_exact(sock, size)
            if kind in (b"O", b"E"):
                target = sys.stdout.buffer if kind == b"O" else sys.stderr.buffer
                if terminal[kind]:
                    payload = screen.feed(kind.decode(), payload)
                target.write(payload)
                target.flush()
            elif kind == b"N":
                sys.stdout.flush()
                reclaim(sys.stderr, screen.mid_line)
                screen.reclaimed()
                # The supervisor escapes what the agent chose (notice_text); a notice is one
                # line all the same.
                text = payload.decode(errors="replace").replace("\n", " ").replace("\x1b", "")
                print(f"airlock: {text}", file=sys.stderr, flush=True)
            elif kind == b"X":
                return dict(json.loads(payload))
            elif kind == b"R":
                refusal = json.loads(payload)
                raise HandoffRefused(str(refusal["error"]), int(refusal.get("exit", 2)))
    finally:
        signal.signal(signal.SIGINT, previous)
        sock.close()

