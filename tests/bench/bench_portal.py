"""The portal's speed inside a real session: the round trip of a pre-approved OpenFile (call to
Response, the Supervisor granting the file for real), and grant-to-visible time of a 1 GiB
file as the agent inside the container sees it. Prints figures; asserts nothing about time."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import docker
import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from app.consent import ConsentBroker
from app.events import EventBus
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, SessionExtension, Supervisor
from app.store import StateStore
from portal.bus import PORTAL_NAME
from portal.extension import PortalExtension
from tests.portal.rig import Scripted, allow
from tests.support import profile_text

pytestmark = [pytest.mark.bench, pytest.mark.docker]

ROUND_TRIPS = 300
BIG_RUNS = 5
GIB = 1 << 30

# Inside the container: report each new /run/airlock/doc/*/NAME with the time it appeared.
WATCHER = r"""
import glob, sys, time
print("watching", flush=True)
seen = set()
end = time.time() + 120
while time.time() < end:
    for path in glob.glob("/run/airlock/doc/*/big.bin"):
        if path not in seen:
            seen.add(path)
            print("seen", time.time(), path, flush=True)
    time.sleep(0.0005)
"""


class Lines:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._partial = ""

    def write(self, stream: str, data: bytes) -> None:
        self._partial += data.decode(errors="replace")
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.queue.put_nowait(line)


async def open_file(
    client: MessageBus, responses: dict[str, asyncio.Future[int]], token: str
) -> int:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    assert client.unique_name is not None
    path = (
        "/org/freedesktop/portal/desktop/request/"
        f"{client.unique_name[1:].replace('.', '_')}/{token}"
    )
    responses[path] = future
    reply = await client.call(
        Message(
            destination=PORTAL_NAME,
            path="/org/freedesktop/portal/desktop",
            interface="org.freedesktop.portal.FileChooser",
            member="OpenFile",
            signature="ssa{sv}",
            body=["", "bench", {"handle_token": Variant("s", token)}],
        )
    )
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return await future


def test_portal_figures(engine: docker.DockerClient, agent_image: str, tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="alb-", dir="/tmp"))
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=runtime)
    dirs.ensure()
    store = StateStore(dirs.database)
    small = tmp_path / "small.txt"
    small.write_text("x\n")
    big = tmp_path / "big" / "big.bin"
    big.parent.mkdir()
    with open(big, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, GIB)
    for path in (small, big):
        path.chmod(0o644)
    bus = EventBus()
    front_end = Scripted(allow(small))
    broker = ConsentBroker(bus, front_end)
    made: list[PortalExtension] = []

    def portal() -> SessionExtension:
        made.append(PortalExtension(broker))
        return made[-1]

    supervisor = Supervisor(
        engine, store, bus, dirs, ProfileCatalog(dirs.user_profiles), extensions=[portal]
    )
    profile = parse_profile(profile_text(agent_image, ["python3", "-c", WATCHER]), "b.toml")

    async def measure() -> tuple[list[float], list[float], list[float], list[float]]:
        lines = Lines()
        run = asyncio.ensure_future(
            supervisor.run(LaunchRequest(profile, Path("b.toml"), (), timeout=300), lines)
        )
        assert await asyncio.wait_for(lines.queue.get(), 60) == "watching"
        address = made[0].address
        assert address is not None
        client = await MessageBus(bus_address=address).connect()
        responses: dict[str, asyncio.Future[int]] = {}

        def on_signal(message: Message) -> None:
            if message.member == "Response" and message.path in responses:
                responses.pop(message.path).set_result(message.body[0])

        client.add_message_handler(on_signal)
        await client.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',interface='org.freedesktop.portal.Request',member='Response'"],
            )
        )
        pings, trips = [], []
        for i in range(ROUND_TRIPS):
            started = time.perf_counter()
            await client.call(
                Message(
                    destination=PORTAL_NAME,
                    path="/",
                    interface="org.freedesktop.DBus.Peer",
                    member="Ping",
                )
            )
            pings.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert await open_file(client, responses, f"rt{i}") == 0
            trips.append(time.perf_counter() - started)
        visible, answered = [], []
        front_end.decide = allow(big)
        for i in range(BIG_RUNS):
            started = time.time()
            assert await open_file(client, responses, f"big{i}") == 0
            answered.append(time.time() - started)
            while True:
                line = await asyncio.wait_for(lines.queue.get(), 30)
                if line.startswith("seen "):
                    visible.append(float(line.split()[1]) - started)
                    break
        client.disconnect()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return pings, trips, answered, visible

    try:
        pings, trips, answered, visible = asyncio.run(measure())
        started = time.perf_counter()
        shutil.copyfile(big, tmp_path / "copy.bin")
        copy_seconds = time.perf_counter() - started
    finally:
        store.close()
        shutil.rmtree(runtime, ignore_errors=True)

    def ms(values: list[float], q: int) -> float:
        return 1000 * statistics.quantiles(values, n=100)[q - 1]

    print()
    print(f"portal: Peer.Ping round trip over the session bus: p50 {ms(pings, 50):.2f} ms")
    print(
        f"portal: pre-approved OpenFile, call to Response, {ROUND_TRIPS} runs: "
        f"p50 {ms(trips, 50):.2f} ms, p90 {ms(trips, 90):.2f} ms, "
        f"max {1000 * max(trips):.2f} ms (target p50 <= 10 ms)"
    )
    print(
        f"portal: 1 GiB file, call to Response: median "
        f"{1000 * statistics.median(answered):.1f} ms; grant to visible inside the "
        f"container: median {1000 * statistics.median(visible):.1f} ms, "
        f"max {1000 * max(visible):.1f} ms over {BIG_RUNS} runs (target < 200 ms)"
    )
    print(f"portal: for scale, copying that file once takes {1000 * copy_seconds:.0f} ms")
