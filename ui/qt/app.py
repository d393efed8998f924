"""The desktop app: one QApplication and one asyncio loop (qasync), the object graph built in
`build_desktop`, and `Desktop`, the controller that does what the tray and the windows ask.

`airlock tray` calls `main`. The app runs the same Supervisor as the command line; it owns
Airlock's name on the session bus (portal/control.py) and the supervisor socket that
`airlock run` hands its sessions to (app/handoff.py), so sessions started from a terminal
are shown, asked about and revoked here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qasync
from PySide6.QtCore import QObject, QSettings, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from app.audit import records, verify
from app.consent import Answer, ConsentBroker, ConsentRequest, RequestKind, denied
from app.demo import DEMO_PROFILE, demo_folder, write_demo_notes
from app.errors import AirlockError, SessionError
from app.events import Event, EventBudget, EventKind
from app.grants import AnyGrant, GrantRequest, Mode, check_grant_path
from app.paths import Dirs
from app.review import Review
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import SessionRecord
from app.threads import thread_bus
from ui.launch_plan import SANDBOX_VERIFIED, LaunchChoice, next_step
from ui.notices import Notices, notice_text
from ui.qt import settings as options
from ui.qt import theme
from ui.qt.bridge import EventBridge
from ui.qt.consent import QtFrontEnd, Requester
from ui.qt.icons import icon
from ui.qt.launch import LaunchDialog
from ui.qt.main_window import MainWindow
from ui.qt.review import ReviewWindow
from ui.qt.settings import Settings, SettingsDialog, apply_autostart
from ui.qt.tray import Tray
from ui.qt.welcome import WelcomeWindow

log = logging.getLogger(__name__)

APP_ID = "org.airlock.Airlock"  # the icon, the AppStream id and the session bus name
DESKTOP_FILE = "airlock"  # packaging/airlock.desktop: the window's app id
AUDIT_SHOWN = 500  # records in the audit view


class SessionOutput:
    """Where the output of sessions the app launches goes: it is already on the event
    stream (session.output), so nothing more is kept."""

    def write(self, stream: str, data: bytes) -> None:
        return None


class NetworkGate:
    """The "Block all network" switch, as far as the app can enforce it: network and upload
    requests are denied without asking. (Hosts a profile allows outright are the egress
    proxy's to refuse; see `Desktop.network_hook`.)"""

    def __init__(self, front_end: QtFrontEnd, settings: Settings) -> None:
        self._front_end = front_end
        self._settings = settings

    async def answer(self, request: ConsentRequest) -> Answer:
        if request.kind in (RequestKind.NETWORK, RequestKind.UPLOAD) and self._settings.get(
            options.BLOCK_NETWORK
        ):
            return denied("network blocked")
        return await self._front_end.answer(request)


class Desktop(QObject):
    """Connects the core to the views and carries out what the user asks for."""

    quit_requested = Signal()

    def __init__(
        self,
        supervisor: Supervisor,
        broker: ConsentBroker,
        front_end: QtFrontEnd,
        settings: Settings,
        bridge: EventBridge,
        window: MainWindow,
        review: Review,
        notifier: Any | None = None,
    ) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.broker = broker
        self.front_end = front_end
        self.settings = settings
        self.bridge = bridge
        self.window = window
        self.tray: Tray | None = None
        self.review = review
        self.notifier = notifier
        self.network_hook: Callable[[bool], None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.runs: dict[str, asyncio.Task[SessionResult]] = {}
        self.reviews: dict[str, ReviewWindow] = {}
        self.welcome: WelcomeWindow | None = None
        self.home = Path.home()  # where the demo's folder goes
        self.sessions: list[SessionRecord] = []
        self._reads: dict[str, int] = {}  # what -> the number of the latest read of it
        self.unwatched: frozenset[str] = frozenset()  # partly unwatched sessions
        self._notified: dict[int, str] = {}  # notification id -> request id
        # What the agents ran into (ui/notices.py), counted in plain Python; only strings
        # reach Qt. Notifications for them come at most this often, whatever the agents do.
        self.notices = Notices()
        self._notice_pace = EventBudget(burst=3, rate=1 / 20)

        bridge.events.connect(self._events)
        bridge.sessions_changed.connect(self.refresh_sessions)
        bridge.grants_changed.connect(self.refresh_grants)
        bridge.changes_changed.connect(self._changes_changed)
        front_end.pending_changed.connect(lambda _: self._update_tray())
        front_end.asked.connect(self._asked)
        front_end.queue.stop_requested.connect(self.stop_session)
        window.launch_requested.connect(self.launch_agent)
        window.stop_requested.connect(self.stop_session)
        window.revoke_session_requested.connect(self.revoke_session)
        window.review_requested.connect(self.open_review)
        window.revoke_grant_requested.connect(self.revoke_grant)
        window.restore_requested.connect(lambda ids: self.spawn(self.restore_grants(ids)))
        window.block_host_requested.connect(
            lambda profile, host, port: self.spawn(self.block_host(profile, host, port))
        )
        window.unblock_requested.connect(lambda grant: self.spawn(self.unblock_host(grant)))
        window.verify_requested.connect(lambda: self.spawn(self.verify_audit()))
        window.settings_requested.connect(self.open_settings)
        window.session_selected.connect(self.show_detail)
        detail = window.history.detail
        detail.forget_requested.connect(self.forget_session)
        detail.review_requested.connect(self.open_review)
        detail.refresh_requested.connect(self.show_detail)
        bridge.grants_changed.connect(self._refresh_detail)
        settings.changed.connect(self._setting_changed)
        # Sessions end on their own (or in another process): look at the store now and then.
        self._sweeper = QTimer(self)
        self._sweeper.setInterval(5_000)
        self._sweeper.timeout.connect(self.refresh_sessions)

    def attach_tray(self, tray: Tray) -> None:
        self.tray = tray
        self._update_tray()

    # running things on the loop

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def run_soon(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """`spawn`, for callers that do not keep the task."""
        self.spawn(coroutine)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, AirlockError):
            self.say(str(error))
        elif error is not None:
            log.error("background task failed", exc_info=error)
            self.say(f"Something went wrong: {type(error).__name__}: {error}")

    def say(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 15_000)

    def start(self) -> None:
        self.bridge.start()
        self.refresh_sessions()
        self.refresh_grants()
        self._sweeper.start()
        self.spawn(self.verify_audit())

    async def close(self) -> None:
        self._sweeper.stop()
        for task in list(self.runs.values()):
            task.cancel()
        if self.runs:
            await asyncio.gather(*self.runs.values(), return_exceptions=True)
        await self.bridge.stop()
        for task in list(self.tasks):
            task.cancel()

    # what the core says

    def _events(self, batch: list[Event]) -> None:
        self.window.add_events(batch)
        for event in batch:
            if event.kind in (EventKind.SESSION_EXITED, EventKind.SESSION_SWEPT):
                self.front_end.forget(event.session or "")
            text = self.notices.counted(event)
            # A question answered in this app: the person answering knows.
            if text and event.details.get("by") not in ("dialog", "notification"):
                self._notice(event, text)
        unwatched = {
            e.session for e in batch if e.kind is EventKind.ACTIVITY_UNWATCHED and e.session
        }
        if unwatched - self.unwatched:
            self.unwatched |= unwatched
            self.window.set_unwatched(self.unwatched)
            self._update_tray()

    # The store is read in a worker thread: a database locked by another airlock process
    # must not freeze the window. Only the latest of overlapping reads is shown.

    def refresh_sessions(self) -> None:
        self._reads["sessions"] = read = self._reads.get("sessions", 0) + 1
        self.spawn(self._refresh_sessions(read))

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
        self._update_tray()
        # An ended session's detail does not change by itself; a running one's does.
        if self.window.history.detail.session in was_live | {r.id for r in sessions}:
            self._refresh_detail()

    # the selected session's detail (ui/qt/session_view.py), read in worker threads

    def show_detail(self, session: str) -> None:
        self._reads["detail"] = read = self._reads.get("detail", 0) + 1
        self.spawn(self._detail(session, read))

    def _refresh_detail(self) -> None:
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
        self.spawn(self._forget(session))

    async def _forget(self, session: str) -> None:
        await asyncio.to_thread(self.supervisor.history.forget, session)
        self.say(f"Session {session} forgotten: its record and output are gone")
        self.refresh_sessions()

    def active_grants(self) -> list[AnyGrant]:
        store = self.supervisor.store
        live = {r.id for r in store.sessions(live_only=True)}
        now = time.time()
        every: list[AnyGrant] = [*store.grants(now), *store.network_grants(now)]
        return [g for g in every if g.session is None or g.session in live]

    def refresh_grants(self) -> None:
        self._reads["grants"] = read = self._reads.get("grants", 0) + 1
        self.spawn(self._refresh_grants(read))

    async def _refresh_grants(self, read: int) -> None:
        grants = await asyncio.to_thread(self.active_grants)
        if read == self._reads["grants"]:
            self.window.set_grants(grants)

    def _update_tray(self) -> None:
        if self.tray is None:
            return
        self.tray.update(
            self.sessions,
            self.front_end.pending,
            self.settings.get(options.BLOCK_NETWORK),
            self.unwatched,
        )

    def _changes_changed(self, session: str) -> None:
        window = self.reviews.get(session)
        if window is not None and window.isVisible():
            self.spawn(window.load())

    def _notice(self, event: Event, text: str) -> None:
        """A refusal, a held upload or a denial: on the status line, and while the window
        is hidden as a notification (a held upload's own dialog is its notification)."""
        line = f"{event.session}: {text}" if event.session else text
        self.say(line)
        if (
            self.notifier is not None
            and not self.window.isVisible()
            and self.settings.get(options.NOTIFY)
            and event.kind is not EventKind.REQUEST_ASKED
            and self._notice_pace.take()
        ):
            self.spawn(self.notifier.notify("Airlock", line, []))

    def _asked(self, request: ConsentRequest) -> None:
        if self.window.isVisible() or not self.settings.get(options.NOTIFY):
            return
        if self.notifier is not None:
            self.spawn(self._notify(request))

    async def _notify(self, request: ConsentRequest) -> None:
        assert self.notifier is not None
        await self.notifier.request(request)

    # what the user asks for (TrayActions and the window's signals)

    def open_window(self) -> None:
        self.window.show_window()

    def open_session(self, session: str) -> None:
        self.window.activity_for(session)

    def show_pending(self) -> None:
        self.front_end.raise_all()

    def stop_session(self, session: str) -> None:
        task = self.runs.get(session)
        if task is not None:
            task.cancel()  # stops and removes the container
            self.say(f"Stopping session {session}…")
            return
        self.spawn(self.supervisor.astop(session, "stopped from the desktop app"))
        self.say(f"Stopping session {session}…")

    # Revocation is done in a worker thread (Supervisor.arevoke): on the loop, a database
    # locked by another airlock process would freeze the window.

    def revoke_grant(self, grant: str) -> None:
        self.spawn(self._revoke_grant(grant))

    async def _revoke_grant(self, grant: str) -> None:
        stopped: list[str] = []

        def note_stop(event: Event) -> None:
            if event.kind is EventKind.GRANT_REVOKED and event.details.get("stopped"):
                stopped.append(event.session or "")

        self.supervisor.bus.attach(note_stop)
        try:
            revoked = await self.supervisor.arevoke([grant])
        finally:
            self.supervisor.bus.detach(note_stop)
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
        self.refresh_grants()

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
        self.refresh_grants()

    async def block_host(self, profile: str, host: str, port: int) -> None:
        """ "Block this host" from the Network tab (app/egress/bridge.py `Egress.block_host`
        says where it is kept and why)."""
        from app.egress.bridge import Egress

        egress = self.supervisor.extension(Egress)
        if egress is None:
            self.say("No agent here has a network: nothing to block")
            return
        grant = await egress.block_host(profile, host, port, self.supervisor.bus)
        self.window.requests.blocked(grant)
        self.say(f"Blocked {grant.subject} for {profile}")
        self.refresh_grants()

    async def unblock_host(self, grant: str) -> None:
        await self.supervisor.arevoke([grant])
        self.window.requests.unblocked(grant)
        self.refresh_grants()

    def revoke_session(self, session: str) -> None:
        self.spawn(self._revoke_session(session))

    async def _revoke_session(self, session: str) -> int:
        grants = await asyncio.to_thread(self.supervisor.store.session_grants, session, time.time())
        revoked = await self.supervisor.arevoke([g.id for g in grants]) if grants else []
        self.say(f"Session {session}: {len(revoked)} grant(s) revoked")
        self.refresh_grants()
        return len(revoked)

    def revoke_everything(self) -> None:
        self.spawn(self._revoke_everything())

    async def _revoke_everything(self) -> None:
        ids = [g.id for g in await asyncio.to_thread(self.active_grants)]
        revoked = await self.supervisor.arevoke(ids) if ids else []
        self.say(f"Revoked {len(revoked)} grant(s): no agent sees any of your files now")
        self.refresh_grants()
        if not self.window.isVisible() and self.tray is not None:
            self.tray.notify("Airlock", f"Revoked {len(revoked)} grant(s)")

    def block_network(self, blocked: bool) -> None:
        self.settings.set(options.BLOCK_NETWORK, blocked)
        if self.network_hook is not None:
            self.network_hook(blocked)
        self._update_tray()
        self.say(
            "All network access of agents is blocked"
            if blocked
            else "Network access follows the profiles again"
        )

    def launch_agent(
        self, profile: str = "", paths: Sequence[Path] = (), writable: bool = False
    ) -> LaunchDialog:
        """The "Launch agent…" dialog: filled in as asked (the demo: one click to go), or
        else with the last choice."""
        profiles = []
        for name, _path in self.supervisor.catalog.available():
            try:
                profiles.append(self.supervisor.catalog.load(name))
            except AirlockError as e:
                log.warning("profile %s: %s", name, e)
        dialog = LaunchDialog(profiles, self.window if self.window.isVisible() else None)
        if profile:
            mode = Mode.READ_WRITE if writable else None
            dialog.select_profile(profile)
            for path in paths:
                dialog.add_path(path, mode)
        elif last := LaunchChoice.decode(self.settings.get(options.LAST_LAUNCH)):
            dialog.restore(last)
        dialog.launch_requested.connect(lambda: self._launch_chosen(dialog))
        dialog.open()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _launch_chosen(self, dialog: LaunchDialog) -> None:
        choice = dialog.choice()
        self.settings.set(options.LAST_LAUNCH, choice.encode())
        dialog.begin()
        self.spawn(self._launch_from(dialog, choice))

    async def _launch_from(self, dialog: LaunchDialog, choice: LaunchChoice) -> None:
        """Launches what the dialog chose, its progress and its outcome shown there."""
        profile = dialog.current_profile()
        try:
            grants = await asyncio.to_thread(
                lambda: tuple(check_grant_path(p, m, self.home) for p, m in choice.paths)
            )
            session = await self.launch_running(choice.profile, grants, dialog.step)
        except AirlockError as e:
            dialog.failed(str(e), next_step(e, profile))
            self.say(f"{choice.profile} did not start: {e}")
            return
        except Exception as e:  # a bug: the dialog says so too, the log has it
            dialog.failed(f"{type(e).__name__}: {e}", next_step(e, profile))
            raise
        dialog.succeeded()
        self.say(f"{choice.profile} runs as session {session}")

    async def launch_running(
        self,
        profile: str,
        grants: tuple[GrantRequest, ...],
        progress: Callable[[str], None],
    ) -> str:
        """Starts a session and returns its id once its agent runs (the sandbox checked),
        telling `progress` each step; raises why it did not start."""
        loop = asyncio.get_running_loop()
        ours: set[str] = set()
        running: asyncio.Future[None] = loop.create_future()

        def heard(event: Event) -> None:
            if event.session not in ours or running.done():
                return
            if event.kind is EventKind.SANDBOX_VERIFIED:
                progress(SANDBOX_VERIFIED)
            elif event.kind is EventKind.SESSION_STARTED:
                running.set_result(None)

        self.supervisor.bus.attach(heard)
        try:
            session = await self.launch_request(profile, grants, progress=progress, named=ours.add)
            task = self.runs.get(session)
            if task is not None and not running.done():
                either: set[asyncio.Future[Any]] = {task, running}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                if task is None or task.cancelled():
                    raise SessionError(f"session {session} was stopped before it started")
                task.result()  # raises why it did not start
        finally:
            self.supervisor.bus.detach(heard)
            running.cancel()
        return session

    async def launch(
        self,
        profile: str,
        paths: Sequence[str],
        mode: Mode = Mode.READ,
        command: tuple[str, ...] | None = None,
    ) -> str:
        grants = tuple(check_grant_path(Path(p), mode, Path.home()) for p in paths)
        return await self.launch_request(profile, grants, command)

    async def launch_request(
        self,
        profile: str,
        grants: tuple[GrantRequest, ...],
        command: tuple[str, ...] | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        named: Callable[[str], None] | None = None,
    ) -> str:
        """Starts a session in the background; returns its id once it has one. `progress`
        hears each step of the start, `named` the id before the session's first event."""
        catalog = self.supervisor.catalog
        request = LaunchRequest(catalog.load(profile), catalog.find(profile), grants, command)
        loop = asyncio.get_running_loop()
        # The session's own id, as the supervisor names it: another session started
        # meanwhile (handed over from `airlock run`) must not be taken for this one.
        known: asyncio.Future[str] = loop.create_future()

        def name(session: str) -> None:
            if named is not None:
                named(session)
            if not known.done():
                known.set_result(session)

        def stepped(step: str) -> None:
            self.say(f"Starting {profile}: {step}…")
            if progress is not None:
                progress(step)

        task = loop.create_task(
            self.supervisor.run(request, SessionOutput(), named=name, progress=stepped)
        )
        either: set[asyncio.Future[Any]] = {task, known}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not known.done():
            known.cancel()
            task.result()  # raises why it could not start
        session = known.result()
        self.runs[session] = task
        task.add_done_callback(lambda t: self.spawn(self._ended(session, t)))
        self.say(f"Launched {profile} as session {session}")
        return session

    async def _ended(self, session: str, task: asyncio.Task[SessionResult]) -> None:
        self.runs.pop(session, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            raise error
        result = task.result()
        self.say(f"Session {session} ended: {result.reason}")
        self.refresh_sessions()
        try:
            changes = await asyncio.to_thread(self.review.changes, session)
        except AirlockError:
            return
        if changes.changes:
            self.open_review(session)

    def open_review(self, session: str) -> None:
        window = self.reviews.get(session)
        if window is None:
            agent = next((r.profile for r in self.sessions if r.id == session), "")
            window = ReviewWindow(session, self.review, self.run_soon, agent=agent)
            self.reviews[session] = window
        window.show()
        window.raise_()
        self.spawn(window.load())

    async def verify_audit(self) -> None:
        directory = self.supervisor.dirs.audit
        checked, tail = await asyncio.gather(
            asyncio.to_thread(verify, directory), asyncio.to_thread(_tail, directory)
        )
        self.window.set_audit(tail, checked)

    def quit(self) -> None:
        self.quit_requested.emit()

    def greet(self) -> WelcomeWindow | None:
        """The first-run window, at the app's first start for this user only."""
        if self.settings.get(options.WELCOME_SEEN):
            return None
        return self.show_welcome()

    def show_welcome(self) -> WelcomeWindow:
        window = self.welcome
        if window is None:
            window = self.welcome = WelcomeWindow(Tray.available())
            window.finished.connect(lambda _: self.settings.set(options.WELCOME_SEEN, True))
            window.demo_requested.connect(self.start_demo)
        window.show()
        window.raise_()
        window.activateWindow()
        return window

    def start_demo(self) -> None:
        self.spawn(self._start_demo())

    async def _start_demo(self) -> LaunchDialog:
        """The demo agent in the Launch dialog, on a folder of sample notes."""
        folder = demo_folder(self.home)
        if await asyncio.to_thread(write_demo_notes, folder):
            self.say(f"Wrote four sample notes to {folder}")
        return self.launch_agent(DEMO_PROFILE, [folder], writable=True)

    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self.window)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _setting_changed(self, key: str) -> None:
        if key == options.AUTOSTART.key:
            apply_autostart(self.settings.get(options.AUTOSTART))
        elif key == options.BLOCK_NETWORK.key:
            self._update_tray()
        elif key == options.COLOURS.key:
            apply_colours(self.settings)

    # the control interface on the session bus (portal/control.py)

    async def control_sessions(self) -> list[tuple[str, str, str]]:
        sessions = await asyncio.to_thread(self.supervisor.store.sessions, live_only=True)
        return [(r.id, r.profile, str(r.state)) for r in sessions]

    async def control_launch(self, profile: str, grants: list[GrantRequest]) -> str:
        request_grants = [check_grant_path(g.path, g.mode, Path("/")) for g in grants]
        return await self.launch_request(profile, tuple(request_grants))

    async def control_stop(self, session: str) -> None:
        if await asyncio.to_thread(self.supervisor.store.session, session) is None:
            raise SessionError(f"no session {session!r}")
        self.stop_session(session)

    async def control_revoke(self, session: str) -> int:
        if await asyncio.to_thread(self.supervisor.store.session, session) is None:
            raise SessionError(f"no session {session!r}")
        return await self._revoke_session(session)

    def control_pending(self) -> int:
        return self.front_end.pending


def _tail(directory: Path) -> list[Any]:
    from collections import deque

    from app.audit import AuditRecord

    return [r for r in deque(records(directory), maxlen=AUDIT_SHOWN) if isinstance(r, AuditRecord)]


def describe_with(supervisor: Supervisor) -> Callable[[ConsentRequest], Requester]:
    """Who asks, from the supervisor's records rather than from the agent's words."""

    def describe(request: ConsentRequest) -> Requester:
        record = supervisor.store.session(request.session)
        description = ""
        image = record.image if record is not None else ""
        try:
            profile = supervisor.catalog.load(record.profile if record else request.profile)
            description = profile.description
            image = (
                f"{profile.image}  ({image.removeprefix('sha256:')[:12]})"
                if image
                else profile.image
            )
        except AirlockError:
            pass
        return Requester(
            agent=record.profile if record else request.profile,
            description=description,
            image=image,
            session=request.session,
            started_at=record.started_at if record else None,
        )

    return describe


def build_desktop(
    supervisor: Supervisor, broker: ConsentBroker, settings: Settings, notifier: Any | None = None
) -> Desktop:
    """The object graph of the desktop app, in one place."""
    front_end = QtFrontEnd(settings, describe_with(supervisor))
    broker.set_front_end(NetworkGate(front_end, settings))
    bridge = EventBridge(supervisor.bus)
    window = MainWindow()
    loop = asyncio.get_running_loop()
    review = Review(supervisor.dirs, thread_bus(supervisor.bus, loop))
    desktop = Desktop(supervisor, broker, front_end, settings, bridge, window, review, notifier)
    desktop.attach_tray(Tray(desktop))
    return desktop


def check_qt() -> None:
    """PySide6 6.12.0 loses a reference to `True` on every `Signal.emit` from Python; on
    Python < 3.12 (where True is not immortal) a long-running app then aborts with
    "bool_dealloc". Say so plainly instead of crashing an hour later."""
    import PySide6

    if PySide6.__version__ == "6.12.0" and sys.version_info < (3, 12):
        raise AirlockError(
            "PySide6 6.12.0 crashes long-running apps on Python "
            f"{sys.version_info.major}.{sys.version_info.minor} (a reference-counting bug "
            "in Signal.emit); install another version: "
            "pip install 'PySide6-Essentials>=6.6,!=6.12.0'"
        )


def application(argv: Sequence[str] = ()) -> QApplication:
    existing = QApplication.instance()
    qt = existing if isinstance(existing, QApplication) else QApplication([*argv] or ["airlock"])
    qt.setApplicationName("Airlock")
    qt.setOrganizationName("airlock")
    qt.setDesktopFileName(DESKTOP_FILE)
    qt.setWindowIcon(icon("airlock"))
    qt.setQuitOnLastWindowClosed(False)
    # Fusion (built into Qt: the same look under every desktop) with focus rings everywhere,
    # in the desktop's colours until the settings say otherwise.
    theme.apply(qt, theme.Scheme.DESKTOP)
    return qt


def apply_colours(settings: Settings) -> None:
    qt = QApplication.instance()
    if isinstance(qt, QApplication):
        theme.apply(qt, theme.Scheme(settings.get(options.COLOURS)))


def user_settings() -> Settings:
    return Settings(
        QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "airlock", "desktop")
    )


@dataclass(frozen=True, slots=True)
class Preset:
    """A launch prepared from the command line (`airlock tray --prepare PROFILE -g PATH`)."""

    profile: str
    paths: tuple[Path, ...] = ()
    writable: bool = False


async def serve(
    dirs: Dirs,
    qt: QApplication,
    show_window: bool,
    ready: Callable[[Desktop], None] | None = None,
    preset: Preset | None = None,
) -> int:
    """Runs the desktop app until Quit. Returns the exit status."""
    from app.egress.bridge import Egress
    from app.handoff import HandoffServer
    from portal.control import ControlService
    from ui.qt.notifications import Notifier
    from ui.wiring import open_consenting_supervisor

    control = ControlService()
    if not await control.connect():
        log.info("no session bus: running without the control interface")
    elif not await control.claim():
        await control.call_show()
        print("airlock: the desktop app is already running; its window was raised", file=sys.stderr)
        control.disconnect()
        return 0
    settings = user_settings()
    apply_colours(settings)
    with open_consenting_supervisor(dirs) as (supervisor, broker):
        notifier = await Notifier.connect() if control.connected else None
        desktop = build_desktop(supervisor, broker, settings, notifier)
        egress = supervisor.extension(Egress)
        if egress is not None:
            desktop.network_hook = egress.block_all
            egress.block_all(bool(settings.get(options.BLOCK_NETWORK)))
        if notifier is not None:
            notifier.reviewed.connect(lambda _request: desktop.show_pending())
            notifier.denied.connect(desktop.front_end.deny)
        # interactive: sessions handed over from `airlock run` get the app's dialogs.
        # Their terminals hear each notice as it comes (`notice_text`), uncounted: with a
        # counting `Notices()` here, the Qt suite's process crashed in test_tray_e2e (PySide
        # 6.11; 3 of 3 runs in session 5, 1 of 2 in session 6), never without it. `airlock run`
        # and `airlock daemon` count.
        handoff = HandoffServer(supervisor, dirs.supervisor_socket, notice_text, interactive=True)
        try:
            await handoff.start()
        except AirlockError as e:
            print(
                f"airlock: {e}; stop it first (the desktop app supervises sessions itself)",
                file=sys.stderr,
            )
            control.disconnect()
            return 1
        if control.connected:
            control.serve(desktop)
        desktop.start()
        tray = desktop.tray
        assert tray is not None
        if Tray.available():
            tray.show()
        if show_window or not Tray.available():
            desktop.open_window()
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def finish() -> None:
            if not finished.done():
                finished.set_result(None)

        desktop.quit_requested.connect(finish)
        qt.aboutToQuit.connect(finish)
        if preset is not None:
            desktop.launch_agent(preset.profile, preset.paths, preset.writable)
        else:
            desktop.greet()
        if ready is not None:
            ready(desktop)
        try:
            await finished
        finally:
            tray.hide()
            await handoff.close()
            await desktop.close()
            await supervisor.aclose()
            control.disconnect()
            if notifier is not None:
                notifier.disconnect()
    return 0


def main(dirs: Dirs, show_window: bool = False, preset: Preset | None = None) -> int:
    check_qt()
    qt = application(sys.argv[:1])
    loop = qasync.QEventLoop(qt)
    asyncio.set_event_loop(loop)
    started = time.monotonic()

    def ready(desktop: Desktop) -> None:
        log.info("desktop app ready in %.0f ms", (time.monotonic() - started) * 1000)
        if os.environ.get("AIRLOCK_READY_FILE"):
            # For tests and service managers: written once everything is up.
            Path(os.environ["AIRLOCK_READY_FILE"]).write_text(f"{os.getpid()}\n")

    try:
        with contextlib.suppress(asyncio.CancelledError):
            return int(loop.run_until_complete(serve(dirs, qt, show_window, ready, preset)))
        return 0
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        QGuiApplication.processEvents()
