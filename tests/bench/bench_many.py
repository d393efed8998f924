"""Many agents at once: the start of one more session (request to `session.started`) and its
end (the container killed to `session.exited`) with ten sessions running, against the same
with none running, medians of interleaved runs. Prints the ratios; asserts nothing about
time."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import docker
import pytest

from app.container import LABEL_ROLE, LABEL_SESSION
from app.events import Event, EventBus, EventKind
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import StateStore
from tests.support import CollectedOutput, containers, profile_text

RUNNING = 10
RUNS = 5


@pytest.mark.bench
def test_one_more_session_with_ten_running(
    tmp_path: Path, agent_image: str, engine: docker.DockerClient
) -> None:
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    store = StateStore(dirs.database)
    supervisor = Supervisor(engine, store, EventBus(), dirs, ProfileCatalog(dirs.user_profiles))
    profile_path = tmp_path / "sleeper.toml"
    profile_path.write_text(profile_text(agent_image, ["sleep", "600"], memory="64m", pids=16))
    request = LaunchRequest(
        parse_profile(profile_path.read_text(), str(profile_path)), profile_path, ()
    )
    seen: dict[tuple[EventKind, str], float] = {}

    def note(event: Event) -> None:
        seen[(event.kind, event.session or "")] = time.perf_counter()

    supervisor.bus.attach(note)

    async def one() -> tuple[float, float]:
        """Start and end of one session: seconds to started, and from kill to exited."""
        loop = asyncio.get_running_loop()
        named: asyncio.Future[str] = loop.create_future()
        begun = time.perf_counter()
        task = loop.create_task(supervisor.run(request, CollectedOutput(), named=named.set_result))
        session = await named
        while (EventKind.SESSION_STARTED, session) not in seen:
            await asyncio.sleep(0.005)
        started = seen[(EventKind.SESSION_STARTED, session)] - begun
        killed = time.perf_counter()
        for container in containers(engine, f"{LABEL_SESSION}={session}", f"{LABEL_ROLE}=agent"):
            await asyncio.to_thread(engine.api.kill, container["Id"])
        await task
        return started, seen[(EventKind.SESSION_EXITED, session)] - killed

    async def scenario() -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        alone, beside = [], []
        background: list[asyncio.Task[SessionResult]] = []
        try:
            await one()  # warm: image lookup, the first reaper
            for _ in range(RUNS):
                alone.append(await one())
            loop = asyncio.get_running_loop()
            names = []
            for _ in range(RUNNING):
                named: asyncio.Future[str] = loop.create_future()
                background.append(
                    loop.create_task(
                        supervisor.run(request, CollectedOutput(), named=named.set_result)
                    )
                )
                names.append(named)
            for named in names:
                session = await named
                while (EventKind.SESSION_STARTED, session) not in seen:
                    await asyncio.sleep(0.05)
            for _ in range(RUNS):
                beside.append(await one())
            return alone, beside
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    try:
        alone, beside = asyncio.run(scenario())
    finally:
        store.close()
    start_alone = statistics.median(s for s, _ in alone)
    start_beside = statistics.median(s for s, _ in beside)
    end_alone = statistics.median(e for _, e in alone)
    end_beside = statistics.median(e for _, e in beside)
    print(
        f"\nstart of one more session: {start_alone * 1000:.0f} ms with none running, "
        f"{start_beside * 1000:.0f} ms with {RUNNING} running: "
        f"ratio {start_beside / start_alone:.2f}"
    )
    print(
        f"end seen (kill to session.exited): {end_alone * 1000:.0f} ms alone, "
        f"{end_beside * 1000:.0f} ms with {RUNNING} running: "
        f"ratio {end_beside / end_alone:.2f}"
    )
