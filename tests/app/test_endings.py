"""How a session's end is told: the code and reason recorded for each way it can end, and the
reason left by whoever stopped it from outside its supervisor."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.endings import EXIT_TIMEOUT, ending, request_stop, stop_requested

OOM = "killed: out of memory"


@pytest.mark.parametrize(
    ("code", "timed_out", "oom", "stopped", "asked", "told"),
    [
        (0, False, False, "", None, (0, "exited normally")),
        (7, False, False, "", None, (7, "exited with status 7")),
        (137, False, False, "", None, (137, "killed by SIGKILL")),
        (200, False, False, "", None, (200, "exited with status 200")),  # no signal 72
        (143, True, False, "", None, (EXIT_TIMEOUT, "timed out")),
        (143, True, False, "stopped: disk", "by you", (EXIT_TIMEOUT, "timed out")),
        (137, True, True, "", None, (137, OOM)),  # memory ran out before the time did
        (137, False, True, "", None, (137, OOM)),
        (137, False, True, "", "stopped by `airlock stop`", (137, "stopped by `airlock stop`")),
        (137, False, True, "stopped: disk", "by you", (137, "stopped: disk")),
        (137, False, False, "stopped: disk", "by you", (137, "stopped: disk")),
        (137, False, False, "", "by you", (137, "by you")),
    ],
)
def test_how_an_end_is_told(
    code: int, timed_out: bool, oom: bool, stopped: str, asked: str | None, told: object
) -> None:
    assert ending(code, timed_out=timed_out, oom=oom, stopped=stopped, asked=asked) == told


def test_a_stop_reason_is_left_beside_the_session_and_read_back(tmp_path: Path) -> None:
    request_stop(tmp_path, "s1", "x" * 600)  # no folder: nobody supervises it here
    assert stop_requested(tmp_path, "s1") is None
    (tmp_path / "s1").mkdir()
    request_stop(tmp_path, "s1", "stopped by `airlock stop`")
    assert stop_requested(tmp_path, "s1") == "stopped by `airlock stop`"
    request_stop(tmp_path, "s1", "y" * 600)
    assert stop_requested(tmp_path, "s1") == "y" * 500
