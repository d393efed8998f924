"""Many agents at once on the real engine: with ten sessions running (and one handed off), a
new launch still starts and an ended one is seen ending; a launch whose caller left never
starts. The loop's default executor is cut to a few threads, fewer than the sessions: a wait
or a stream held there (as before) would stall everything, on any machine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import pytest

from app.container import LABEL_ROLE, LABEL_SESSION
from app.events import Event, EventBus, EventKind
from app.handoff import HandoffServer
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import StateStore
from tests.support import CollectedOutput, containers, profile_text

pytestmark = pytest.mark.docker

RUNNING = 10
HEADER = struct.Struct(">cI")
T = TypeVar("T")


@pytest.fixture
def supervisor(dirs: Dirs, engine: docker.DockerClient) -> Iterator[Supervisor]:
    store = StateStore(dirs.database)
    yield Supervisor(engine, store, EventBus(), dirs, ProfileCatalog(dirs.user_profiles))
    store.close()


def run_small(scenario: Callable[[], Awaitable[T]]) -> T:
    """Runs `scenario` on a loop whose default executor has 3 threads."""

    async def main() -> T:
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="default")
        )
        return await scenario()

    return asyncio.run(main())


class Sessions:
    """Launches sessions on a supervisor and watches their events."""

    def __init__(self, supervisor: Supervisor, tmp_path: Path, image: str) -> None:
        self.supervisor = supervisor
        self.started: dict[str, asyncio.Event] = {}
        self.ended: dict[str, asyncio.Event] = {}
        self.profiles = tmp_path
        self.image = image
        self.tasks: list[asyncio.Task[SessionResult]] = []
        supervisor.bus.attach(self._event)

    def _event(self, event: Event) -> None:
        if event.kind is EventKind.SESSION_STARTED:
            self.started.setdefault(event.session or "", asyncio.Event()).set()
        elif event.kind is EventKind.SESSION_EXITED:
            self.ended.setdefault(event.session or "", asyncio.Event()).set()

    def profile(self, command: list[str]) -> Path:
        path = self.profiles / f"agent-{len(list(self.profiles.glob('*.toml')))}.toml"
        path.write_text(profile_text(self.image, command, memory="64m", pids=16))
        return path

    def request(self, command: list[str]) -> LaunchRequest:
        path = self.profile(command)
        return LaunchRequest(parse_profile(path.read_text(), str(path)), path, ())

    def launch(self, command: list[str]) -> tuple[asyncio.Task[SessionResult], asyncio.Future[str]]:
        loop = asyncio.get_running_loop()
        named: asyncio.Future[str] = loop.create_future()
        task = loop.create_task(
            self.supervisor.run(self.request(command), CollectedOutput(), named=named.set_result)
        )
        self.tasks.append(task)
        return task, named

    async def running(self, session: str, timeout: float = 120) -> None:
        await asyncio.wait_for(self.started.setdefault(session, asyncio.Event()).wait(), timeout)

    async def stop_all(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def handoff(
    socket: Path, profile: Path, *, leave: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An `airlock run` handing its request over, as ui/handoff_client.py does; with `leave`,
    one that gives up (Ctrl-C) right after asking."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    request = {
        "op": "run",
        "cwd": str(profile.parent),
        "profile": str(profile),
        "grants": [],
        "command": None,
    }
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    if leave:
        writer.close()
        await writer.wait_closed()
    return reader, writer


async def frame(reader: asyncio.StreamReader, kind: bytes) -> bytes:
    """Reads frames until one of `kind`; its payload."""
    while True:
        got, size = HEADER.unpack(await reader.readexactly(HEADER.size))
        payload = await reader.readexactly(size)
        if got == kind:
            return payload
        assert got != b"R", payload.decode()


def agents_of(engine: docker.DockerClient, session: str) -> list[dict[str, object]]:
    return containers(engine, f"{LABEL_SESSION}={session}", f"{LABEL_ROLE}=agent")


def test_with_many_running_a_launch_starts_and_an_end_is_seen(
    supervisor: Supervisor, agent_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    sessions = Sessions(supervisor, tmp_path, agent_image)

    async def scenario() -> tuple[SessionResult, int]:
        server = HandoffServer(
            supervisor, supervisor.dirs.supervisor_socket, notice=lambda event: None
        )
        await server.start()
        try:
            launched = [sessions.launch(["sleep", "600"]) for _ in range(RUNNING)]
            reader, writer = await handoff(
                supervisor.dirs.supervisor_socket, sessions.profile(["sleep", "600"])
            )
            handed = (await asyncio.wait_for(frame(reader, b"S"), 120)).decode()
            ids = [await asyncio.wait_for(named, 120) for _, named in launched]
            for session in [*ids, handed]:
                await sessions.running(session)
            # All eleven run, their waits and streams held: a new one still starts and ends.
            task, _ = sessions.launch(["echo", "ready"])
            result = await asyncio.wait_for(task, 60)
            # One killed by hand is seen ending while the others run on.
            victim = ids[3]
            for container in agents_of(engine, victim):
                await asyncio.to_thread(engine.api.kill, container["Id"])
            await asyncio.wait_for(sessions.ended.setdefault(victim, asyncio.Event()).wait(), 30)
            still = sum(1 for s in ids if not sessions.ended.get(s, asyncio.Event()).is_set())
            writer.close()  # the handed-off one's caller leaves: its session ends
            await asyncio.wait_for(sessions.ended.setdefault(handed, asyncio.Event()).wait(), 30)
            return result, still
        finally:
            await sessions.stop_all()
            await server.close()

    result, still = run_small(scenario)
    assert result.exit_code == 0 and result.reason == "exited normally"
    assert still == RUNNING - 1
    assert all(not agents_of(engine, s) for s in sessions.started)


def test_a_launch_whose_caller_left_never_starts(
    supervisor: Supervisor, agent_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    sessions = Sessions(supervisor, tmp_path, agent_image)
    asked: list[str] = []

    async def scenario() -> list[str]:
        server = HandoffServer(
            supervisor, supervisor.dirs.supervisor_socket, notice=lambda event: None
        )
        await server.start()
        try:
            launched = [sessions.launch(["sleep", "600"]) for _ in range(RUNNING)]
            ids = [await asyncio.wait_for(named, 120) for _, named in launched]
            # Callers that give up at once, while ten sessions start beside them.
            profile = sessions.profile(["sleep", "600"])
            for _ in range(4):
                await handoff(supervisor.dirs.supervisor_socket, profile, leave=True)
            for session in ids:
                await sessions.running(session)
            # Containers killed by hand free nothing that a stale launch was waiting for.
            for session in ids[:3]:
                for container in agents_of(engine, session):
                    await asyncio.to_thread(engine.api.kill, container["Id"])
            for session in ids[:3]:
                await asyncio.wait_for(
                    sessions.ended.setdefault(session, asyncio.Event()).wait(), 30
                )
            await asyncio.sleep(5)
            asked.extend(
                r.id for r in await asyncio.to_thread(supervisor.store.sessions) if r.id not in ids
            )
            return [s for s in asked if s in sessions.started]
        finally:
            await sessions.stop_all()
            await server.close()

    assert run_small(scenario) == []
    # The callers' sessions (those that got as far as an id) were ended, not left behind.
    for session in asked:
        assert not agents_of(engine, session)
        record = supervisor.store.session(session)
        assert record is not None and not record.live
