"""Why a session ended: the code and reason its end is recorded with (`ending`, pure), and the
reason left by whoever ended it from outside its supervisor (`airlock stop`, a revocation, the
terminal's menu) beside the session's files, which its supervisor, seeing the agent's
container end, records instead of the signal."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

_NAME = "stop-reason"
MAX_REASON = 500
EXIT_TIMEOUT = 124  # as timeout(1) exits


def request_stop(sessions: Path, session: str, reason: str) -> None:
    folder = sessions / session
    if not folder.is_dir():
        return
    temporary = folder / f".{_NAME}.{os.getpid()}"
    temporary.write_text(reason[:MAX_REASON])
    os.replace(temporary, folder / _NAME)


def stop_requested(sessions: Path, session: str) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (sessions / session / _NAME).read_text()[:MAX_REASON] or None
    return None


def ending(
    code: int, *, timed_out: bool, oom: bool, stopped: str, asked: str | None
) -> tuple[int, str]:
    """The exit code and reason of a session whose agent exited with `code`: past its time
    (unless memory ran out meanwhile), then why Airlock stopped it (`stopped`), then why
    someone else did (`asked`), then out of memory, and otherwise the agent's own exit."""
    if timed_out and not oom:
        return EXIT_TIMEOUT, "timed out"
    if stopped:
        return code, stopped
    if asked:
        return code, asked
    if oom:
        return code, "killed: out of memory"
    return code, describe_exit(code)


def describe_exit(code: int) -> str:
    if code == 0:
        return "exited normally"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exited with status {code}"
