"""Taking access away from the desktop app: one grant (confirmed in the grants table), all of
a session's access and everything (confirmed here, saying what each agent loses), the Undo
that gives it back, and blocking or unblocking a host from the Network tab.

Revocations run in a worker thread (`Supervisor.arevoke`, `Supervisor.arestore`): on the
loop, a database locked by another airlock process would freeze the window. Why a
revocation is done at once and undone by re-granting: ui/qt/grants_view.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from PySide6.QtWidgets import QMessageBox

from app.events import Event, EventKind
from app.grants import AnyGrant, NetworkGrant
from app.sessions import Supervisor
from ui.qt.background import Background
from ui.qt.grants_view import UNDO_SECONDS, confirm_many
from ui.qt.main_window import MainWindow
from ui.qt.overview import Overview
from ui.qt.tray import Tray
from ui.revoke_plan import (
    Confirmation,
    Held,
    confirm_everything,
    confirm_session,
    of_session,
    revoked_text,
    takes_away,
)

Pick = Callable[[list[AnyGrant], dict[str, str]], list[AnyGrant]]  # (active, live) -> chosen


class Revoker:
    def __init__(
        self,
        supervisor: Supervisor,
        window: MainWindow,
        background: Background,
        overview: Overview,
    ) -> None:
        self.supervisor = supervisor
        self.window = window
        self.background = background
        self.overview = overview
        self.tray: Tray | None = None
        self.box: QMessageBox | None = None  # the latest confirmation (tests press it)

    def say(self, text: str) -> None:
        self.background.say(text)

    async def _revoke(self, grants: Sequence[str]) -> tuple[list[AnyGrant], list[str]]:
        """Revokes; returns what was revoked and the sessions that were stopped for it."""
        stopped: list[str] = []

        def note_stop(event: Event) -> None:
            if event.kind is EventKind.GRANT_REVOKED and event.details.get("stopped"):
                stopped.append(event.session or "")

        self.supervisor.bus.attach(note_stop)
        try:
            revoked = await self.supervisor.arevoke(grants)
        finally:
            self.supervisor.bus.detach(note_stop)
        return revoked, stopped

    # one grant, confirmed in the grants table (MainWindow._confirm_revoke)

    def revoke_grant(self, grant: str) -> None:
        self.background.spawn(self._revoke_grant(grant))

    async def _revoke_grant(self, grant: str) -> None:
        revoked, stopped = await self._revoke([grant])
        names = self.window.names
        for g in revoked:
            text = f"Revoked {g.path}: agents no longer see it" + (
                f"; {', '.join(names.name(s) for s in dict.fromkeys(stopped))} stopped (a "
                "read-write folder cannot be taken back from a running agent; what it staged "
                "is kept for review)"
                if stopped
                else ""
            )
            self.say(text)
            # Revoked now; the undo gives it back (ui/qt/grants_view.py says why).
            self.window.undo_bar.offer(text, [g.id])
        self.overview.refresh_grants()

    async def restore_grants(self, grants: list[str]) -> None:
        """The undo of a revocation: the grants are given back where that is possible."""
        kept: list[str] = []

        def note(event: Event) -> None:
            if event.kind is EventKind.GRANT_ADDED and event.details.get("restored") is False:
                kept.append(f"{self.window.names.name(event.session)}: {event.details['reason']}")

        self.supervisor.bus.attach(note)
        try:
            restored = await self.supervisor.arestore(grants)
        finally:
            self.supervisor.bus.detach(note)
        self.say(
            f"Gave back {', '.join(str(g.path) for g in restored) or 'nothing'}"
            + (f" ({'; '.join(kept)})" if kept else "")
        )
        self.overview.refresh_grants()

    # many grants: confirmed here, then revoked at once with the same Undo

    def _held(self, pick: Pick) -> list[Held]:
        """The grants `pick` chooses among those in force, with who has them now and
        whether each is a folder. Blocking (the store, the file system)."""
        store = self.supervisor.store
        live = {r.id: r.profile for r in store.sessions(live_only=True)}
        now = time.time()
        every: list[AnyGrant] = [*store.grants(now), *store.network_grants(now)]
        active = [g for g in every if g.session is None or g.session in live]
        held = []
        for grant in pick(active, live):
            if isinstance(grant, NetworkGrant):
                reaches = tuple(s for s, p in live.items() if grant.applies(s, p))
                held.append(Held(grant, reaches))
            else:
                reaches = tuple(s for s in store.sessions_using(grant.id) if s in live)
                held.append(Held(grant, reaches, grant.path.is_dir()))
        return held

    def _of_session(self, session: str) -> Pick:
        def pick(active: list[AnyGrant], live: dict[str, str]) -> list[AnyGrant]:
            # Its own and its profile's, and any other it was linked to (a file grant
            # handed to it at launch or through the portal).
            linked = {g.id for g in self.supervisor.store.session_grants(session)}
            chosen = of_session(session, live.get(session, ""), active)
            ids = {g.id for g in chosen}
            return chosen + [g for g in active if g.id in linked and g.id not in ids]

        return pick

    def revoke_session(self, session: str) -> None:
        """ "Revoke all of its access" (the sessions tab, the tray's session menu)."""
        self.background.spawn(self._confirm_session(session))

    async def _confirm_session(self, session: str) -> None:
        held = await asyncio.to_thread(self._held, self._of_session(session))
        name = self.window.names.name
        if not held:
            self._nothing(f"{name(session)} has no access to take away")
            return
        self._ask(confirm_session(session, held, name, UNDO_SECONDS), held)

    def revoke_everything(self) -> None:
        """The tray's "Revoke everything"."""
        self.background.spawn(self._confirm_everything())

    async def _confirm_everything(self) -> None:
        held = await asyncio.to_thread(
            self._held, lambda active, _live: [g for g in active if takes_away(g)]
        )
        if not held:
            self._nothing("Nothing to revoke: no agent has access to anything")
            return
        self._ask(confirm_everything(held, self.window.names.name, UNDO_SECONDS), held)

    def _nothing(self, text: str) -> None:
        self.say(text)
        if not self.window.isVisible() and self.tray is not None:
            self.tray.notify("Airlock", text)

    def _ask(self, confirmation: Confirmation, held: Sequence[Held]) -> None:
        parent = self.window if self.window.isVisible() else None
        ids = [h.grant.id for h in held]
        self.box = confirm_many(
            parent, confirmation, lambda: self.background.spawn(self._revoke_many(ids))
        )

    async def _revoke_many(self, grants: Sequence[str]) -> None:
        revoked, stopped = await self._revoke(grants)
        text = revoked_text(len(revoked), stopped, self.window.names.name)
        self.say(text)
        self.window.undo_bar.offer(text, [g.id for g in revoked])
        # The Undo is in the Grants tab: shown there, also when the tray asked.
        if not self.window.isVisible():
            self.window.show_window()
        page = self.window.undo_bar.parentWidget()
        if page is not None:
            self.window.tabs.setCurrentWidget(page)
        self.overview.refresh_grants()

    async def revoke_session_now(self, session: str) -> int:
        """All of a session's access, unasked (the control interface: its caller asked
        outright). Returns how many grants were revoked."""
        held = await asyncio.to_thread(self._held, self._of_session(session))
        revoked, _stopped = await self._revoke([h.grant.id for h in held])
        self.say(f"{self.window.names.name(session)}: {len(revoked)} grant(s) revoked")
        self.overview.refresh_grants()
        return len(revoked)

    # hosts, from the Network tab

    async def block_host(self, profile: str, host: str, port: int) -> None:
        """ "Block this host" (app/egress/bridge.py `Egress.block_host` says where it is
        kept and why)."""
        from app.egress.bridge import Egress

        egress = self.supervisor.extension(Egress)
        if egress is None:
            self.say("No agent here has a network: nothing to block")
            return
        grant = await egress.block_host(profile, host, port, self.supervisor.bus)
        self.window.requests.blocked(grant)
        self.say(f"Blocked {grant.subject} for {profile}")
        self.overview.refresh_grants()

    async def unblock_host(self, grant: str) -> None:
        await self.supervisor.arevoke([grant])
        self.window.requests.unblocked(grant)
        self.overview.refresh_grants()
