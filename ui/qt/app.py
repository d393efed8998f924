"""The desktop app: one QApplication and one asyncio loop (qasync), the object graph built in
`build_desktop`, and `Desktop`, the controller that does what the tray and the windows ask
by composing smaller ones (ui/qt/overview.py, launching.py, revoking.py, reviews.py,
alerts.py).

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

from app.consent import Answer, ConsentBroker, ConsentRequest, RequestKind, denied
from app.errors import AirlockError, SessionError
from app.grants import GrantRequest, Mode, check_grant_path
from app.paths import Dirs
from app.review import Review
from app.sessions import SessionResult, Supervisor
from app.store import SessionRecord
from app.threads import thread_bus
from ui.notices import notice_text
from ui.qt import settings as options
from ui.qt import theme
from ui.qt.alerts import Alerts
from ui.qt.background import Background
from ui.qt.bridge import EventBridge
from ui.qt.consent import QtFrontEnd, Requester
from ui.qt.icons import icon
from ui.qt.launch import LaunchDialog
from ui.qt.launching import Launcher
from ui.qt.main_window import MainWindow
from ui.qt.overview import Overview
from ui.qt.review import ReviewWindow
from ui.qt.reviews import Reviews
from ui.qt.revoking import Revoker
from ui.qt.settings import Settings, SettingsDialog, apply_autostart
from ui.qt.tray import Tray
from ui.qt.welcome import WelcomeWindow

log = logging.getLogger(__name__)

APP_ID = "org.airlock.Airlock"  # the icon, the AppStream id and the session bus name
DESKTOP_FILE = "airlock"  # packaging/airlock.desktop: the window's app id


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
    """Connects the core to the views and carries out what the user asks for, through the
    controllers it composes: `overview` (what is shown of sessions, grants, the audit),
    `launcher` (launching, the first run), `revoker` (revocation and its undo, blocked hosts),
    `reviews` (the review windows) and `alerts` (notices and notifications)."""

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
        self.background = background = Background(self.say)
        self.overview = overview = Overview(supervisor, window, front_end, settings, background)
        self.alerts = alerts = Alerts(window, settings, background, notifier)
        self.review_windows = reviews = Reviews(review, background, overview)
        self.launcher = launcher = Launcher(
            supervisor, settings, window, background, overview, reviews, review
        )
        self.revoker = revoker = Revoker(supervisor, window, background, overview)
        spawn = background.spawn

        bridge.events.connect(overview.events)
        bridge.events.connect(alerts.events)
        bridge.sessions_changed.connect(overview.refresh_sessions)
        bridge.grants_changed.connect(overview.refresh_grants)
        bridge.grants_changed.connect(overview.refresh_detail)
        bridge.changes_changed.connect(reviews.changes_changed)
        front_end.pending_changed.connect(lambda _: overview.update_tray())
        front_end.asked.connect(alerts.asked)
        front_end.queue.stop_requested.connect(launcher.stop_session)
        window.launch_requested.connect(self.launch_agent)
        window.stop_requested.connect(launcher.stop_session)
        window.revoke_session_requested.connect(revoker.revoke_session)
        window.review_requested.connect(self.open_review)
        window.revoke_grant_requested.connect(revoker.revoke_grant)
        window.restore_requested.connect(lambda ids: spawn(revoker.restore_grants(ids)))
        window.block_host_requested.connect(
            lambda profile, host, port: spawn(revoker.block_host(profile, host, port))
        )
        window.unblock_requested.connect(lambda grant: spawn(revoker.unblock_host(grant)))
        window.verify_requested.connect(lambda: spawn(overview.verify_audit()))
        window.settings_requested.connect(self.open_settings)
        window.session_selected.connect(overview.show_detail)
        detail = window.history.detail
        detail.forget_requested.connect(overview.forget_session)
        detail.review_requested.connect(self.open_review)
        detail.refresh_requested.connect(overview.show_detail)
        settings.changed.connect(self._setting_changed)
        # Sessions end on their own (or in another process): look at the store now and then.
        self._sweeper = QTimer(self)
        self._sweeper.setInterval(5_000)
        self._sweeper.timeout.connect(overview.refresh_sessions)

    def attach_tray(self, tray: Tray) -> None:
        self.tray = self.overview.tray = self.revoker.tray = tray
        self.overview.update_tray()

    def say(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 15_000)

    def start(self) -> None:
        self.bridge.start()
        self.overview.refresh_sessions()
        self.overview.refresh_grants()
        self._sweeper.start()
        self.spawn(self.overview.verify_audit())

    async def close(self) -> None:
        self._sweeper.stop()
        await self.launcher.close()
        await self.bridge.stop()
        self.background.cancel()

    # what the controllers hold, by the names the tests and the tray use

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.background.spawn(coroutine)

    @property
    def runs(self) -> dict[str, asyncio.Task[SessionResult]]:
        return self.launcher.runs

    @property
    def reviews(self) -> dict[str, ReviewWindow]:
        return self.review_windows.windows

    @property
    def home(self) -> Path:
        return self.launcher.home

    @home.setter
    def home(self, home: Path) -> None:
        self.launcher.home = home

    @property
    def sessions(self) -> list[SessionRecord]:
        return self.overview.sessions

    async def launch(
        self,
        profile: str,
        paths: Sequence[str],
        mode: Mode = Mode.READ,
        command: tuple[str, ...] | None = None,
    ) -> str:
        return await self.launcher.launch(profile, paths, mode, command)

    async def launch_request(
        self, profile: str, grants: tuple[GrantRequest, ...], command: tuple[str, ...] | None = None
    ) -> str:
        return await self.launcher.launch_request(profile, grants, command)

    def show_detail(self, session: str) -> None:
        self.overview.show_detail(session)

    def revoke_grant(self, grant: str) -> None:
        self.revoker.revoke_grant(grant)

    def open_review(self, session: str) -> None:
        self.review_windows.open(session)

    def greet(self) -> WelcomeWindow | None:
        return self.launcher.greet()

    # what the user asks for (TrayActions and the window's signals)

    def open_window(self) -> None:
        self.window.show_window()

    def open_session(self, session: str) -> None:
        self.window.activity_for(session)

    def show_pending(self) -> None:
        self.front_end.raise_all()

    def stop_session(self, session: str) -> None:
        self.launcher.stop_session(session)

    def revoke_session(self, session: str) -> None:
        self.revoker.revoke_session(session)

    def revoke_everything(self) -> None:
        self.revoker.revoke_everything()

    def launch_agent(
        self, profile: str = "", paths: Sequence[Path] = (), writable: bool = False
    ) -> LaunchDialog:
        return self.launcher.launch_agent(profile, paths, writable)

    def show_welcome(self) -> WelcomeWindow:
        return self.launcher.show_welcome()

    def block_network(self, blocked: bool) -> None:
        self.settings.set(options.BLOCK_NETWORK, blocked)
        if self.network_hook is not None:
            self.network_hook(blocked)
        self.overview.update_tray()
        self.say(
            "All network access of agents is blocked"
            if blocked
            else "Network access follows the profiles again"
        )

    def quit(self) -> None:
        self.quit_requested.emit()

    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self.window)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _setting_changed(self, key: str) -> None:
        if key == options.AUTOSTART.key:
            apply_autostart(self.settings.get(options.AUTOSTART))
        elif key == options.BLOCK_NETWORK.key:
            self.overview.update_tray()
        elif key == options.COLOURS.key:
            apply_colours(self.settings)

    # the control interface on the session bus (portal/control.py)

    async def control_sessions(self) -> list[tuple[str, str, str]]:
        sessions = await asyncio.to_thread(self.supervisor.store.sessions, live_only=True)
        return [(r.id, r.profile, str(r.state)) for r in sessions]

    async def control_launch(self, profile: str, grants: list[GrantRequest]) -> str:
        request_grants = [check_grant_path(g.path, g.mode, Path("/")) for g in grants]
        return await self.launcher.launch_request(profile, tuple(request_grants))

    async def control_stop(self, session: str) -> None:
        if await asyncio.to_thread(self.supervisor.store.session, session) is None:
            raise SessionError(f"no session {session!r}")
        self.stop_session(session)

    async def control_revoke(self, session: str) -> int:
        if await asyncio.to_thread(self.supervisor.store.session, session) is None:
            raise SessionError(f"no session {session!r}")
        return await self.revoker.revoke_session_now(session)

    def control_pending(self) -> int:
        return self.front_end.pending


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
