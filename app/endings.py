"""Why a session was ended from outside its supervisor (`airlock stop`, a revocation, the
terminal's menu): the one who stops it leaves the reason beside the session's files, and its
supervisor, seeing the agent's container end, records that reason instead of the signal."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_NAME = "stop-reason"
MAX_REASON = 500


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
