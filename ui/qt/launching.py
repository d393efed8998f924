"""Starting agents from the desktop app: the Launch dialog and its progress, the first-run
window and its demo, the sessions the app runs (`runs`) and their ends and stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.demo import DEMO_PROFILE, demo_folder, write_demo_notes
from app.errors import AirlockError, SessionError
from app.events import Event, EventKind
from app.grants import GrantRequest, Mode, check_grant_path
from app.review import Review
from app.sessions import LaunchRequest, SessionResult, Supervisor
from ui.launch_plan import SANDBOX_VERIFIED, LaunchChoice, next_step
from ui.qt import settings as options
from ui.qt.background import Background
from ui.qt.launch import LaunchDialog
from ui.qt.main_window import MainWindow
from ui.qt.overview import Overview
from ui.qt.reviews import Reviews
from ui.qt.settings import Settings
from ui.qt.tray import Tray
from ui.qt.welcome import WelcomeWindow

log = logging.getLogger(__name__)


class SessionOutput:
    """Where the output of sessions the app launches goes: it is already on the event
    stream (session.output), so nothing more is kept."""

    def write(self, stream: str, data: bytes) -> None:
        return None


class Launcher:
    def __init__(
        self,
        supervisor: Supervisor,
        settings: Settings,
        window: MainWindow,
        background: Background,
        overview: Overview,
        reviews: Reviews,
        review: Review,
    ) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self.window = window
        self.background = background
        self.overview = overview
        self.reviews = reviews
        self.review = review
        self.runs: dict[str, asyncio.Task[SessionResult]] = {}
        self.welcome: WelcomeWindow | None = None
        self.home = Path.home()  # where the demo's folder goes

    def say(self, text: str) -> None:
        self.background.say(text)

    async def close(self) -> None:
        for task in list(self.runs.values()):
            task.cancel()
        if self.runs:
            await asyncio.gather(*self.runs.values(), return_exceptions=True)

    def stop_session(self, session: str) -> None:
        task = self.runs.get(session)
        if task is not None:
            task.cancel()  # stops and removes the container
        else:
            self.background.spawn(self.supervisor.astop(session, "stopped from the desktop app"))
        self.say(f"Stopping session {session}…")

    # the Launch dialog

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
        self.background.spawn(self._launch_from(dialog, choice))

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

    # starting a session

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
        task.add_done_callback(lambda t: self.background.spawn(self._ended(session, t)))
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
        self.overview.refresh_sessions()
        try:
            changes = await asyncio.to_thread(self.review.changes, session)
        except AirlockError:
            return
        if changes.changes:
            self.reviews.open(session)

    # the first run

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
        self.background.spawn(self._start_demo())

    async def _start_demo(self) -> LaunchDialog:
        """The demo agent in the Launch dialog, on a folder of sample notes."""
        folder = demo_folder(self.home)
        if await asyncio.to_thread(write_demo_notes, folder):
            self.say(f"Wrote four sample notes to {folder}")
        return self.launch_agent(DEMO_PROFILE, [folder], writable=True)
