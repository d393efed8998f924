"""A real terminal for a test: a command run on a pseudo-terminal that is its controlling
terminal, typed at and read like a person would, resized like a window."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path


class PtyProcess:
    def __init__(
        self, argv: list[str], cwd: Path, rows: int = 24, cols: int = 80, stdin: int | None = None
    ) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.modes_before = termios.tcgetattr(self.slave)
        self.process = subprocess.Popen(
            argv,
            stdin=self.slave if stdin is None else stdin,
            stdout=self.slave,
            stderr=self.slave,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(1, termios.TIOCSCTTY, 0),
            close_fds=True,
        )
        self.seen = b""  # everything the terminal was sent so far
        self._mark = 0

    def resize(self, rows: int, cols: int) -> None:
        """As a window resize: the kernel sends SIGWINCH to the terminal's foreground group."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes | str) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            return False
        self.seen += chunk
        return bool(chunk)

    def expect(self, pattern: bytes | str, timeout: float = 60) -> re.Match[bytes]:
        """Waits for `pattern` in what came after the previous match."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.seen, self._mark)
            if match:
                self._mark = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0 or (
                not self._read(min(left, 0.5))
                and self.process.poll() is not None
                and not self._read(0.2)
            ):
                if left > 0 and self.process.poll() is not None:
                    raise AssertionError(
                        f"{pattern!r} never came; the command ended "
                        f"({self.process.returncode}): {self.tail()}"
                    )
                if left <= 0:
                    raise AssertionError(f"{pattern!r} never came: {self.tail()}")

    def tail(self) -> str:
        return self.seen[-3000:].decode("utf-8", "replace")

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05):
            pass
        try:
            return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"it never ended: {self.tail()}") from None

    def modes(self) -> list[object]:
        return termios.tcgetattr(self.slave)

    def stty(self) -> str:
        """`stty -a` of the terminal, as the user's shell would see it, but its size (which
        the tests change as a window would)."""
        modes = subprocess.run(
            ["stty", "-a"], stdin=self.slave, capture_output=True, text=True, check=True
        ).stdout
        return re.sub(r"rows \d+; columns \d+; ", "", modes)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
