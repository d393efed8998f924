"""Stopping sessions: from any process (`airlock stop`, the desktop app) through the engine,
from this one when something it watches says so (the disk, the file watch, the audit log), and
listing an agent's processes. Blocking, and safe in any thread."""

from __future__ import annotations

import threading

from app.endings import request_stop
from app.errors import EngineError, SessionError
from app.paths import Dirs
from app.sessions.engine import Engine, is_agent, kill_agent, session_containers
from app.sessions.registry import RunningSession, SessionRegistry, process_alive
from app.sessions.sweep import sweep_orphans
from app.store import StateStore

STOP_GRACE_SECONDS = 5


class SessionControl:
    """What other commands do to `owner`'s sessions, whichever process supervises them."""

    def __init__(
        self, engine: Engine, owner: str, store: StateStore, dirs: Dirs, registry: SessionRegistry
    ) -> None:
        self._engine = engine
        self._owner = owner
        self._store = store
        self._dirs = dirs
        self._registry = registry

    def sweep(self) -> list[str]:
        """Removes what crashed supervisors left behind (app/sessions/sweep.py); returns the
        sessions swept, for the caller to announce on its loop."""
        return sweep_orphans(self._engine, self._owner, self._store, self._dirs, self._registry)

    def stop(self, session: str, reason: str) -> list[str]:
        """Stops a session's containers (its supervisor then ends it, for `reason`); a
        session whose supervisor is gone is swept, and returned."""
        record = self._store.session(session)
        if record is None or not record.live:
            raise SessionError(f"no running session {session!r} (see `airlock sessions`)")
        request_stop(self._dirs.sessions, session, reason)
        containers = session_containers(self._engine, self._owner, session)
        for container in containers:
            try:
                self._engine.stop(container.id, STOP_GRACE_SECONDS)
            except EngineError as e:
                raise EngineError(f"cannot stop session {session}: {e}") from e
        if not containers or not process_alive(record.supervisor):
            return self.sweep()
        return []

    def kill_soon(self, running: RunningSession, reason: str) -> None:
        """Kills a session of this process's agent from a thread of its own, at once and
        from any thread; its end says why."""
        running.stop_reason = running.stop_reason or reason
        threading.Thread(
            target=kill_agent,
            args=(self._engine, self._owner, running.id),
            name=f"stop-{running.id}",
            daemon=True,
        ).start()

    def processes(self, session: str) -> tuple[list[str], list[list[str]]]:
        """The agent's process list, as `ps` inside the container would show it."""
        record = self._store.session(session)
        containers = (
            session_containers(self._engine, self._owner, session)
            if record is not None and record.live
            else []
        )
        agents = [c for c in containers if is_agent(c)]
        if not agents:
            raise SessionError(f"no running session {session!r} (see `airlock sessions`)")
        try:
            return self._engine.top(agents[0].id)
        except EngineError as e:
            raise EngineError(f"cannot list the processes of {session}: {e}") from e
