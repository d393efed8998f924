"""The desktop app under many agents (shared by the CI test and the benchmark): `Desktop` on
the real supervisor (portal, egress) and the Docker engine; a first batch of launches in
parallel, more while they run, each agent asking a question through the portal, some
containers killed from outside. Returns what it measured (tests/loadfigures.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker

import app.egress.bridge  # noqa: F401 - imported here, not on the loop (as `airlock tray` starts)
import portal.extension  # noqa: F401
from app.consent import ConsentRequest
from app.events import Event, EventKind
from app.paths import Dirs
from tests.loadfigures import ASK_THEN_RUN, LAUNCH_TIMEOUT, Figures, all_removed, kill_agent
from tests.loadfigures import until as until_async
from tests.support import profile_text
from tests.ui.qt.conftest import until
from ui.qt import settings as options
from ui.qt.app import Desktop, build_desktop
from ui.qt.settings import Settings
from ui.wiring import open_consenting_supervisor

PROFILE = "asker"


@contextmanager
def short_dirs() -> Iterator[Dirs]:
    # Short: the sessions' bus sockets live under the runtime directory (108 bytes at most).
    base = Path(tempfile.mkdtemp(prefix="alm-", dir="/tmp"))
    dirs = Dirs(config=base / "config", state=base / "state", runtime=base / "run")
    dirs.ensure()
    try:
        yield dirs
    finally:
        shutil.rmtree(base, ignore_errors=True)


def install_asker(dirs: Dirs, image: str) -> None:
    text = profile_text(image, ["sh", "-c", ASK_THEN_RUN], memory="64m", pids=32).replace(
        'name = "test-agent"', f'name = "{PROFILE}"'
    )
    dirs.user_profiles.mkdir(parents=True, exist_ok=True)
    (dirs.user_profiles / f"{PROFILE}.toml").write_text(text)


def live_in_window(desktop: Desktop, session: str) -> bool:
    return any(r.id == session and r.live for r in desktop.window.sessions.rows)


async def desktop_load(
    desktop: Desktop, engine: docker.DockerClient, first: int, more: int, killed: int
) -> Figures:
    """Runs the load on a started `desktop`; leaves its sessions running."""
    figures = Figures(f"desktop app, {first} + {more} sessions")
    bus = desktop.supervisor.bus

    def note(event: Event) -> None:
        launch = figures.by_session(event.session or "")
        if launch is None:
            return
        if event.kind is EventKind.SESSION_STARTED:
            launch.started = time.monotonic()
        elif event.kind is EventKind.SESSION_EXITED and launch.ended is None:
            launch.ended = time.monotonic()

    def shown(request: ConsentRequest) -> None:
        launch = figures.by_session(request.session)
        if launch is not None and launch.question_shown is None:
            launch.question_shown = time.monotonic()

    bus.attach(note)
    desktop.front_end.asked.connect(shown)

    async def launch_one() -> None:
        # As the Launch dialog does: the app's own task, its failure on the status line.
        launch = figures.launch(time.monotonic())
        task = desktop.spawn(desktop.launch(PROFILE, []))
        try:
            launch.session = await asyncio.wait_for(asyncio.shield(task), LAUNCH_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a failed launch is a figure, not the end
            launch.failed = f"{type(e).__name__}: {e}"

    def all_resolved(batch: int) -> bool:
        now = time.monotonic()
        assert not figures.unresolved(now), "a launch neither started nor failed in time"
        return all(x.started is not None or x.failed for x in figures.launches[:batch])

    try:
        await asyncio.gather(*(launch_one() for _ in range(first)))
        await until(lambda: all_resolved(first), LAUNCH_TIMEOUT + 5, "the first batch")
        # More while those run (each with its question pending).
        await asyncio.gather(*(launch_one() for _ in range(more)))
        await until(lambda: all_resolved(first + more), LAUNCH_TIMEOUT + 5, "the second batch")
        running = figures.started
        await until(
            lambda: all(x.question_shown is not None for x in running),
            120,
            "every question in the queue",
        )
        assert desktop.front_end.pending == len(running)
        assert f"of {len(running)}" in desktop.front_end.queue.position.text()
        await until(
            lambda: all(live_in_window(desktop, x.session) for x in running),
            30,
            "every session in the window",
        )
        # Some killed from outside, while their questions wait.
        victims = running[:: max(1, len(running) // killed)][:killed]
        for victim in victims:
            victim.killed = time.monotonic()
            await kill_agent(engine, victim.session)
        await until(
            lambda: all(v.ended is not None for v in victims), 60, "the killed sessions to end"
        )
        await until(
            lambda: not any(live_in_window(desktop, v.session) for v in victims),
            30,
            "the killed sessions shown as ended",
        )
        await until(
            lambda: desktop.front_end.pending == len(running) - len(victims),
            30,
            "the killed sessions' questions withdrawn",
        )
        assert all(live_in_window(desktop, x.session) for x in running if x not in victims)
        return figures
    finally:
        bus.detach(note)
        desktop.front_end.asked.disconnect(shown)


async def with_desktop(
    dirs: Dirs,
    settings: Settings,
    engine: docker.DockerClient,
    image: str,
    first: int,
    more: int,
    killed: int,
) -> Figures:
    """The app's object graph as `airlock tray` builds it, the load, then Quit."""
    settings.set(options.CONSENT_TIMEOUT, 900)
    install_asker(dirs, image)
    with open_consenting_supervisor(dirs) as (supervisor, broker):
        desktop = build_desktop(supervisor, broker, settings)
        desktop.start()
        try:
            figures = await desktop_load(desktop, engine, first, more, killed)
        finally:
            await desktop.close()
            await supervisor.aclose()
        sessions = [x.session for x in figures.launches if x.session]
        await until_async(lambda: all_removed(engine, sessions), 60, "every container removed")
        return figures
