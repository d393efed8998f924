"""Stopping sessions and listing their processes (app/sessions/control.py) against the
in-memory engine: a stop's reason is what the end records, a stopped or unknown session has
no processes, and a kill from this process says why."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import SessionError
from app.events import EventKind
from app.paths import Dirs
from app.sessions import SessionResult
from app.store import StateStore
from tests.app.sessions.memory_engine import KILLED
from tests.app.sessions.test_session_lifecycle import request, supervise
from tests.support import CollectedOutput


@pytest.mark.parametrize("how", ["stop", "kill_soon"])
def test_a_stopped_session_ends_for_the_reason_given_and_has_no_processes_left(
    dirs: Dirs, store: StateStore, how: str
) -> None:
    supervisor, _, events = supervise(dirs, store, lambda c: int(c.wait_for_signal()))

    async def scenario() -> SessionResult:
        run = asyncio.create_task(supervisor.run(request(), CollectedOutput()))
        while not any(e.kind is EventKind.SESSION_STARTED for e in events):
            await asyncio.sleep(0.01)
        session = events[-1].session or ""
        titles, rows = supervisor.processes(session)
        assert titles == ["PID", "CMD"] and len(rows) == 1
        if how == "stop":
            await supervisor.astop(session, "stopped by you")
        else:
            running = supervisor.sessions.get(session)
            assert running is not None
            supervisor.control.kill_soon(running, "stopped by you")
        return await asyncio.wait_for(run, 10)

    result = asyncio.run(scenario())
    assert result.reason == "stopped by you"
    assert how == "stop" or result.exit_code == KILLED
    with pytest.raises(SessionError, match="no running session"):
        supervisor.processes(result.session)
    with pytest.raises(SessionError, match="no running session"):
        supervisor.stop(result.session)
