"""The user's terminal while an agent owns it: raw mode, restored on every way out, its size,
and the escape key that reaches Airlock instead of the agent.

Standard library only: the thin `airlock run` (a hand-off client) uses it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

ESCAPE_KEY = 0x1D  # Ctrl-]: see the README, "Interactive sessions", for why this key
ESCAPE_NAME = "Ctrl-]"
_WATCHDOG_DONE = b"done"


def window_size(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal on `fd`; (24, 80) when it does not say."""
    try:
        rows, cols, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        )
    except OSError:
        return 24, 80
    return (rows or 24), (cols or 80)


def split_at_escape(data: bytes, key: int | None = ESCAPE_KEY) -> tuple[bytes, bool, bytes]:
    """Keystrokes before the escape key, whether it came, and what followed it (held back:
    it was typed at Airlock's menu, not at the agent)."""
    if key is None:
        return data, False, b""
    at = data.find(bytes([key]))
    if at < 0:
        return data, False, b""
    return data[:at], True, data[at + 1 :]


def _watch(fd: int, saved: list[Any], pipe: int) -> None:
    """The watchdog's body (a forked child): waits for its parent's pipe to close; unless the
    parent said it restored the terminal itself, restores the saved modes."""
    try:
        os.setsid()  # its own session: no signal for Airlock's process group reaches it
        for signum in (
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGTERM,
            signal.SIGQUIT,
            signal.SIGTSTP,
            signal.SIGTTOU,
            signal.SIGPIPE,
        ):
            signal.signal(signum, signal.SIG_IGN)
        # It holds nothing else of its parent's: an open hand-off socket or output pipe kept
        # here would hide the parent's end from whoever waits for it.
        keep = {fd, pipe}
        for name in os.listdir("/proc/self/fd"):
            if name.isdigit() and int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        said = b""
        while chunk := os.read(pipe, 64):
            said += chunk
        if said != _WATCHDOG_DONE:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
                os.write(fd, b"\x1b[?25h\r\n")  # the cursor back, a fresh line
    finally:
        os._exit(0)


class RawTerminal:
    """The user's terminal in raw mode for the length of a session (keystrokes, Ctrl-C
    included, go to the agent's own terminal, which does the line editing and signals).

    The saved modes come back on every way out: the end of the session, an exception, a
    signal (the context's exit runs), and when Airlock itself is killed — a SIGKILL runs no
    code of ours, so a tiny forked watchdog holds the saved modes and a pipe from us: when
    the pipe closes without our "done", it restores them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        self._pipe: int | None = None
        self._raw = False

    def __enter__(self) -> RawTerminal:
        read_end, self._pipe = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            os.close(self._pipe)
            _watch(self.fd, self.saved, read_end)
        os.close(read_end)
        # Ours only: a program we start must not hold the watchdog's pipe open after we die.
        os.set_inheritable(self._pipe, False)
        self._watchdog = pid
        self.raw()
        return self

    def raw(self) -> None:
        tty.setraw(self.fd, termios.TCSADRAIN)
        self._raw = True

    def restore(self) -> None:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        self._raw = False

    @contextlib.contextmanager
    def cooked(self) -> Iterator[None]:
        """The user's own modes for a while (Airlock's menu reads lines), then raw again."""
        self.restore()
        try:
            yield
        finally:
            self.raw()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe, _WATCHDOG_DONE)
            os.close(self._pipe)
            self._pipe = None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._watchdog, 0)


def is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def wants_tty(forced: bool | None) -> bool:
    """A pseudo-terminal for the agent: forced by -t / -T, else when both stdin and stdout
    are terminals (a pipe on either side means a script, which wants plain streams)."""
    if forced is not None:
        return forced
    return is_terminal(sys.stdin.fileno()) and is_terminal(sys.stdout.fileno())
