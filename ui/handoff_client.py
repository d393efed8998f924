"""The thin `airlock run`: hands the request to a running supervisor (see app/handoff.py).

Standard library only, so that starting an agent from the command line costs an interpreter
start and a socket, not the import of the whole core.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ui.rawmode import (
    ESCAPE_KEY,
    ESCAPE_NAME,
    RawTerminal,
    is_terminal,
    split_at_escape,
    window_size,
)
from ui.terminal import TerminalFilter, reclaim

HEADER = struct.Struct(">cI")  # the same framing as app/handoff.py
READ_SIZE = 64 * 1024
MAX_PENDING = 1024 * 1024  # stdin is not read while this much waits for the agent
MENU = (
    f"\r\n\x1b[0m\x1b[?25hairlock menu ({ESCAPE_NAME}): [s] stop the session   "
    f"[a] answer questions   [g] show grants   [k] send {ESCAPE_NAME} to the agent   "
    "[r] return to the agent\r\n"
)


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


def run(
    sock: socket.socket,
    request: dict[str, Any],
    tty: bool = False,
    grants: Callable[[str], list[str]] | None = None,
    answer: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Streams the session's output to this terminal and this process's stdin, resizes and
    the end of its input to the agent; returns the end frame's data. With `tty`, the agent
    owns this terminal (raw mode, Ctrl-] opens Airlock's menu), as in ui/interactive.py;
    without, its output to a terminal is filtered (ui/terminal.py) and Airlock's notices
    start from a known state, as with a session supervised here."""
    stdin = sys.stdin.fileno()
    raw = RawTerminal(stdin) if tty and is_terminal(stdin) else None
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with raw or contextlib.nullcontext():
        client = _Client(sock, stdin, tty, raw, grants, answer)
        try:
            return client.run(json.dumps(dict(request, op="run")).encode() + b"\n")
        finally:
            signal.signal(signal.SIGINT, previous)
            client.close()
            sock.close()
            if raw is not None:
                raw.restore()
                if client.notices:  # the agent had the screen: a known state first
                    reclaim(sys.stderr)
            for text in client.notices:
                print(f"airlock: {text}", file=sys.stderr, flush=True)


class _Client:
    """One select loop: the supervisor's frames in, keystrokes / stdin and resizes out.
    Nothing blocks on the socket: what the agent has not taken yet waits in `outgoing`
    (and stdin is not read while much does), so its output is never stuck behind it."""

    def __init__(
        self,
        sock: socket.socket,
        stdin: int,
        tty: bool,
        raw: RawTerminal | None,
        grants: Callable[[str], list[str]] | None,
        answer: Callable[[str], None] | None = None,
    ) -> None:
        self.answer = answer
        self.sock = sock
        self.stdin = stdin
        self.tty = tty
        self.raw = raw
        self.grants = grants
        self.session = ""
        self.notices: list[str] = []
        # Plain streams to a terminal are filtered (ui/terminal.py): the agent's output must
        # not hide or rewrite Airlock's text. A terminal the agent owns gets its bytes whole.
        self.screen = TerminalFilter()
        self.filtered = {
            b"O": not tty and sys.stdout.isatty(),
            b"E": not tty and sys.stderr.isatty(),
        }
        self.outgoing = bytearray()
        self.incoming = bytearray()
        self.stdin_open = True
        self.last_input = b"\n"
        self._winch_r, self._winch_w = os.pipe()
        os.set_blocking(self._winch_w, False)
        self._previous_winch = signal.signal(signal.SIGWINCH, self._on_winch)

    def _on_winch(self, signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(self._winch_w, b"w")

    def close(self) -> None:
        signal.signal(signal.SIGWINCH, self._previous_winch)
        os.close(self._winch_r)
        os.close(self._winch_w)

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.outgoing += HEADER.pack(kind, len(payload)) + payload

    def run(self, request: bytes) -> dict[str, Any]:
        self.outgoing += request
        self.sock.setblocking(False)
        if self.raw is not None:
            self._resized()
        while True:
            readers = [self.sock.fileno(), self._winch_r]
            if self.stdin_open and len(self.outgoing) < MAX_PENDING:
                readers.append(self.stdin)
            ready, writable, _ = select.select(
                readers, [self.sock.fileno()] if self.outgoing else [], []
            )
            if writable:
                try:
                    sent = self.sock.send(self.outgoing)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    # It closed its side (a refusal, the end): what it said is still to read.
                    sent = len(self.outgoing)
                    self.stdin_open = False
                del self.outgoing[:sent]
            if self._winch_r in ready:
                os.read(self._winch_r, 64)
                self._resized()
            if self.stdin in ready:
                self._on_input()
            if self.sock.fileno() in ready:
                try:
                    data = self.sock.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    raise ConnectionError("the supervisor went away")
                self.incoming += data
                end = self._frames()
                if end is not None:
                    return end

    def _resized(self) -> None:
        if self.raw is not None:
            rows, cols = window_size(self.raw.fd)
            self.send(b"W", struct.pack(">HH", rows, cols))

    def _on_input(self) -> None:
        try:
            data = os.read(self.stdin, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            if self.tty and self.raw is None:  # a pipe into the agent's terminal: its EOF key
                self.send(b"I", b"\x04" if self.last_input.endswith(b"\n") else b"\x04\x04")
            self.send(b"D")
            return
        self.last_input = data
        before, escaped, _ = split_at_escape(data, ESCAPE_KEY if self.raw else None)
        if before:
            self.send(b"I", before)
        if escaped:
            self._menu()

    def _frames(self) -> dict[str, Any] | None:
        while len(self.incoming) >= HEADER.size:
            kind, size = HEADER.unpack_from(self.incoming)
            if len(self.incoming) < HEADER.size + size:
                return None
            payload = bytes(self.incoming[HEADER.size : HEADER.size + size])
            del self.incoming[: HEADER.size + size]
            if kind in (b"O", b"E"):
                fd = sys.stdout.fileno() if kind == b"O" or self.tty else sys.stderr.fileno()
                if self.filtered[kind]:
                    payload = self.screen.feed(kind.decode(), payload)
                _write_all(fd, payload)
            elif kind == b"N":
                # The supervisor escapes what the agent chose (notice_text); a notice is one
                # line all the same.
                text = payload.decode(errors="replace").replace("\n", " ").replace("\x1b", "")
                if self.raw is not None:
                    self.notices.append(text)  # the agent owns the screen: after it
                else:
                    reclaim(sys.stderr, self.screen.mid_line)
                    self.screen.reclaimed()
                    print(f"airlock: {text}", file=sys.stderr, flush=True)
            elif kind == b"S":
                self.session = payload.decode(errors="replace")
            elif kind == b"X":
                return dict(json.loads(payload))
            elif kind == b"R":
                refusal = json.loads(payload)
                raise HandoffRefused(str(refusal["error"]), int(refusal.get("exit", 2)))
        return None

    def _menu(self) -> None:
        """Airlock's menu on this terminal. The socket is not read meanwhile, so the
        supervisor holds the agent's output back (it waits for us to take it)."""
        assert self.raw is not None
        fd = self.raw.fd
        with self.raw.cooked():
            while True:
                _write_all(fd, MENU.encode())
                choice = _read_line(fd).strip().lower()
                if choice in ("", "r"):
                    break
                if choice == "k":
                    self.send(b"I", bytes([ESCAPE_KEY]))
                    break
                if choice == "s":
                    _write_all(fd, b"airlock: stopping the session\n")
                    self.send(b"K")
                    break
                if choice == "g":
                    lines = self.grants(self.session) if self.grants and self.session else []
                    _write_all(fd, ("\n".join(lines or ["no grants"]) + "\n").encode())
                if choice == "a":
                    if self.answer is not None and self.session:
                        self.answer(self.session)  # those waiting for `airlock ask`
                    else:
                        _write_all(fd, b"airlock: no questions here\n")
        rows, cols = window_size(fd)  # a size change makes a full-screen agent redraw
        self.send(b"W", struct.pack(">HH", rows, max(1, cols - 1)))
        self.send(b"W", struct.pack(">HH", rows, cols))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)


def _read_line(fd: int) -> str:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        line += chunk
    return line.decode("utf-8", "replace")
