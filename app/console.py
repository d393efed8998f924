"""The agent's console: its stdin, stdout and stderr over the engine's attach connection (the
Engine API's hijacked socket, opened by app/sessions/engine.py), and the size of its
pseudo-terminal.

Blocking throughout: the reading runs in the session's output thread, the writing in the
caller's input thread (or through `asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.errors import EngineError

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
_FRAME = struct.Struct(">BxxxI")  # the engine's multiplexed stream: kind, 3 pad bytes, size
_STREAMS = {1: "stdout", 2: "stderr"}
# TERM and COLORTERM come from the user's environment into the container: a name, not a
# place for escape sequences or another variable.
_TERM_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
DEFAULT_TERM = "xterm-256color"


@dataclass(frozen=True, slots=True)
class Terminal:
    """How the agent's stdin is connected: `tty` gives it a pseudo-terminal of `rows` x
    `cols` (the user's terminal in raw mode on the other side); without one its stdin is
    the caller's (a pipe, a file), with the end of it delivered."""

    tty: bool
    rows: int = 24
    cols: int = 80
    term: str = DEFAULT_TERM
    colorterm: str = ""

    def environment(self) -> dict[str, str]:
        if not self.tty:
            return {}
        environment = {"TERM": self.term if _TERM_VALUE.fullmatch(self.term) else DEFAULT_TERM}
        if _TERM_VALUE.fullmatch(self.colorterm):
            environment["COLORTERM"] = self.colorterm
        return environment

    @classmethod
    def from_environment(
        cls, tty: bool, rows: int, cols: int, environ: Mapping[str, str]
    ) -> Terminal:
        return cls(
            tty,
            rows,
            cols,
            environ.get("TERM", DEFAULT_TERM) or DEFAULT_TERM,
            environ.get("COLORTERM", ""),
        )


class Console:
    """One attach connection to an agent container (made by the engine's `console`, before
    the container starts, so that nothing it prints is missed and its first read of stdin
    finds the caller)."""

    def __init__(
        self,
        sock: socket.socket,
        tty: bool,
        resize: Callable[[int, int], None],
        name: str = "",
        keep: object = None,
    ) -> None:
        self.tty = tty
        self._sock = sock
        self._resize = resize  # the engine's resize call for this container
        self._container = name
        self._keep = keep  # the HTTP response: its collection would close the socket
        self._write_lock = threading.Lock()
        self._stdin_closed = False

    def chunks(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        """(stdout, stderr) pieces as the engine sends them, until the container's streams
        end: the shape of docker-py's demultiplexed attach stream."""
        if self.tty:  # one raw stream: a terminal has no separate stderr
            while data := self._recv(READ_SIZE):
                yield data, None
            return
        pending = b""
        while True:
            while len(pending) < _FRAME.size:
                data = self._recv(READ_SIZE)
                if not data:
                    return
                pending += data
            kind, size = _FRAME.unpack_from(pending)
            pending = pending[_FRAME.size :]
            while len(pending) < size:
                data = self._recv(max(READ_SIZE, size - len(pending)))
                if not data:
                    return
                pending += data
            payload, pending = pending[:size], pending[size:]
            stream = _STREAMS.get(kind)
            if stream == "stdout":
                yield payload, None
            elif stream == "stderr":
                yield None, payload

    def _recv(self, size: int) -> bytes:
        try:
            return self._sock.recv(size)
        except OSError as e:
            log.debug("console of %s: %s", self._container[:12], e)
            return b""

    def write(self, data: bytes) -> None:
        """Keystrokes or piped input for the agent; blocks while the agent does not read."""
        with self._write_lock:
            if self._stdin_closed:
                return
            try:
                self._sock.sendall(data)
            except OSError as e:  # the container ended: what it did not read is lost
                log.debug("stdin of %s: %s", self._container[:12], e)
                self._stdin_closed = True

    def close_stdin(self) -> None:
        """The end of the caller's input: the agent reads EOF (the container is created with
        `stdin_once`, so the engine closes its stdin when ours closes)."""
        with self._write_lock:
            if self._stdin_closed:
                return
            self._stdin_closed = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, cols: int) -> None:
        """The agent's pseudo-terminal takes this size; its foreground program gets SIGWINCH."""
        if not self.tty or rows <= 0 or cols <= 0:
            return
        try:
            self._resize(rows, cols)
        except EngineError as e:  # it ended meanwhile
            log.debug("cannot resize the console of %s: %s", self._container[:12], e)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        close = getattr(self._keep, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


@runtime_checkable
class ConsoleOutput(Protocol):
    """An output that also feeds the agent's stdin (the terminal of `airlock run`, a
    hand-off client): told the console once the agent runs, so it can send keystrokes,
    resizes and the end of its input."""

    def write(self, stream: str, data: bytes) -> None: ...

    def attached(self, console: Console) -> None: ...


async def console_started(console: Console, terminal: Terminal | None, output: object) -> None:
    """The agent runs: its terminal gets the caller's size, and the caller its console."""
    if terminal is not None and terminal.tty:
        await asyncio.to_thread(console.resize, terminal.rows, terminal.cols)
    if isinstance(output, ConsoleOutput):
        output.attached(console)
    else:  # nobody feeds it: the agent reads the end of its input at once
        await asyncio.to_thread(console.close_stdin)
