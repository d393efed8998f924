"""What the window and the tray show of the core's state: running and ended sessions, the
grants in force, the selected session's detail and the audit log, read off the loop.

The store is read in worker threads: a database locked by another airlock process must not
freeze the window. Only the latest of overlapping reads is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from pathlib import Path

from app.audit import AuditRecord, records, verify
from app.errors import SessionError
from app.events import Event, EventKind
from app.grants import AnyGrant
from app.sessions import Supervisor
from app.store import SessionRecord
from ui.qt import settings as options
from ui.qt.background import Background
from ui.qt.consent import QtFrontEnd
from ui.qt.main_window import MainWindow
from ui.qt.settings import Settings
from ui.qt.tray import Tray

AUDIT_SHOWN = 500  # records in the audit view


class Overview:
    def __init__(
        self,
        supervisor: Supervisor,
        window: MainWindow,
        front_end: QtFrontEnd,
        settings: Settings,
        background: Background,
    ) -> None:
        self.supervisor = supervisor
        self.window = window
        self.front_end = front_end
        self.settings = settings
        self.background = background
        self.tray: Tray | None = None
        self.sessions: list[SessionRecord] = []  # the live ones
        self.unwatched: frozenset[str] = frozenset()  # partly unwatched sessions
        self._reads: dict[str, int] = {}  # what -> the number of the latest read of it

    def _read(self, what: str) -> int:
        self._reads[what] = read = self._reads.get(what, 0) + 1
        return read

    def events(self, batch: list[Event]) -> None:
        self.window.add_events(batch)
        for event in batch:
            if event.kind in (EventKind.SESSION_EXITED, EventKind.SESSION_SWEPT):
                self.front_end.forget(event.session or "")
        unwatched = {
            e.session for e in batch if e.kind is EventKind.ACTIVITY_UNWATCHED and e.session
        }
        if unwatched - self.unwatched:
            self.unwatched |= unwatched
            self.window.set_unwatched(self.unwatched)
            self.update_tray()

    def update_tray(self) -> None:
        if self.tray is None:
            return
        self.tray.update(
            self.sessions,
            self.front_end.pending,
            self.settings.get(options.BLOCK_NETWORK),
            self.unwatched,
        )

    # sessions

    def refresh_sessions(self) -> None:
        self.background.spawn(self._refresh_sessions(self._read("sessions")))

    async def _refresh_sessions(self, read: int) -> None:
        every = await asyncio.to_thread(self.supervisor.store.sessions)
        if read != self._reads["sessions"]:
            return
        sessions = [r for r in every if r.live]
        ended = sorted(
            (r for r in every if not r.live), key=lambda r: r.ended_at or 0, reverse=True
        )
        was_live = {r.id for r in self.sessions}
        self.sessions = sessions
        self.window.set_sessions(self.sessions)
        self.window.history.set_ended(ended, {r.id for r in sessions})
        self.update_tray()
        # An ended session's detail does not change by itself; a running one's does.
        if self.window.history.detail.session in was_live | {r.id for r in sessions}:
            self.refresh_detail()

    def agent_of(self, session: str) -> str:
        """The session's profile, also once it ended (the window remembers its agents)."""
        return self.window.names.profile(session) or next(
            (r.profile for r in self.sessions if r.id == session), ""
        )

    # the selected session's detail (ui/qt/session_view.py)

    def show_detail(self, session: str) -> None:
        self.background.spawn(self._detail(session, self._read("detail")))

    def refresh_detail(self) -> None:
        if self.window.history.detail.session:
            self.show_detail(self.window.history.detail.session)

    async def _detail(self, session: str, read: int) -> None:
        history = self.supervisor.history
        here = session in self.supervisor.sessions
        live = self.supervisor.tally.activity(session) if here else None
        summary, output = await asyncio.gather(
            asyncio.to_thread(history.summary, session, live),
            asyncio.to_thread(lambda: history.output(session).text()),
        )
        sight = None
        if here and summary.record.live:
            with contextlib.suppress(SessionError):  # it ended meanwhile
                sight = await self.supervisor.sight(session)
        if read == self._reads["detail"]:
            self.window.history.detail.show_session(summary, output, sight)

    def forget_session(self, session: str) -> None:
        self.background.spawn(self._forget(session))

    async def _forget(self, session: str) -> None:
        await asyncio.to_thread(self.supervisor.history.forget, session)
        self.background.say(f"Session {session} forgotten: its record and output are gone")
        self.refresh_sessions()

    # grants

    def active_grants(self) -> list[AnyGrant]:
        """Grants in force: those of live sessions and of profiles. Blocking (the store)."""
        store = self.supervisor.store
        live = {r.id for r in store.sessions(live_only=True)}
        now = time.time()
        every: list[AnyGrant] = [*store.grants(now), *store.network_grants(now)]
        return [g for g in every if g.session is None or g.session in live]

    def refresh_grants(self) -> None:
        self.background.spawn(self._refresh_grants(self._read("grants")))

    async def _refresh_grants(self, read: int) -> None:
        grants = await asyncio.to_thread(self.active_grants)
        if read == self._reads["grants"]:
            self.window.set_grants(grants)

    # the audit log

    async def verify_audit(self) -> None:
        directory = self.supervisor.dirs.audit
        checked, tail = await asyncio.gather(
            asyncio.to_thread(verify, directory), asyncio.to_thread(_tail, directory)
        )
        self.window.set_audit(tail, checked)


def _tail(directory: Path) -> list[AuditRecord]:
    return [r for r in deque(records(directory), maxlen=AUDIT_SHOWN) if isinstance(r, AuditRecord)]
