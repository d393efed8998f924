"""The user's terminal: the escape key split out of keystrokes, and raw mode that comes back
even when the process that set it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import time

import pytest

from ui.rawmode import ESCAPE_KEY, split_at_escape, window_size


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        (b"ls\r", (b"ls\r", False, b"")),
        (b"ab\x1dcd", (b"ab", True, b"cd")),
        (b"\x1d", (b"", True, b"")),
        (b"\x1b[A\x1d\x1d", (b"\x1b[A", True, b"\x1d")),
        (b"\x03\x1a\x04", (b"\x03\x1a\x04", False, b"")),  # Ctrl-C, Ctrl-Z, Ctrl-D: the agent's
    ],
)
def test_the_escape_key_is_split_out(typed: bytes, expected: tuple[bytes, bool, bytes]) -> None:
    assert split_at_escape(typed, ESCAPE_KEY) == expected
    assert split_at_escape(typed, None) == (typed, False, b"")


_HOLDER = """
import os, sys, time
from ui.rawmode import RawTerminal
fd = int(sys.argv[1])
with RawTerminal(fd):
    os.write(1, b"raw\\n")
    time.sleep(300)
"""


@pytest.mark.parametrize("how", ["killed", "normal"])
def test_raw_mode_comes_back_even_after_sigkill(how: str) -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HOLDER.replace(
                    "time.sleep(300)", "time.sleep(300)" if how == "killed" else "pass"
                ),
                str(slave),
            ],
            stdout=subprocess.PIPE,
            pass_fds=(slave,),
            cwd=os.getcwd(),
        )
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"raw\n"
        if how == "killed":
            assert termios.tcgetattr(slave) != before
            holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave) != before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert termios.tcgetattr(slave) == before
        assert window_size(slave) == (24, 80) or window_size(slave)[0] > 0
    finally:
        os.close(master)
        os.close(slave)
