"""The private bus: a real dbus-daemon with the generated policy, before and after it is locked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from portal.bus import PORTAL_NAME, BusError, BusLayout, PrivateBus, bus_config

DENIED = "org.freedesktop.DBus.Error.AccessDenied"


def driver(
    member: str,
    signature: str = "",
    body: list[object] | None = None,
    interface: str = "org.freedesktop.DBus",
) -> Message:
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
    )


def with_bus(runtime: Path, scenario: Callable[[PrivateBus], Awaitable[None]]) -> None:
    async def main() -> None:
        bus = PrivateBus(BusLayout(runtime))
        await bus.start()
        try:
            await scenario(bus)
        finally:
            await bus.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_config_is_well_formed_and_says_what_it_allows(tmp_path: Path) -> None:
    for locked in (False, True):
        text = bus_config(tmp_path / "a&b" / "bus", locked=locked)
        root = ET.fromstring(text.split("\n", 2)[2])  # past the DOCTYPE
        assert root.findtext("listen") == f"unix:path={tmp_path}/a&b/bus"
        assert root.findtext("auth") == "EXTERNAL"
        policy = root.find("policy")
        assert policy is not None and policy.get("context") == "default"
        owns = [(e.tag, e.get("own")) for e in policy if e.get("own")]
        assert owns == ([("deny", "*")] if locked else [("allow", PORTAL_NAME)])
        assert root.find("servicedir") is None and root.find("includedir") is None
        limits = {e.get("name"): int(e.text or 0) for e in root.findall("limit")}
        assert limits["max_message_size"] == 1 << 20


def test_a_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BusError, match="too long"):
        bus_config(tmp_path / ("x" * 120) / "bus", locked=False)


def test_start_lock_and_stop(tmp_path: Path) -> None:
    async def scenario(bus: PrivateBus) -> None:
        socket = bus.layout.socket
        assert stat.S_ISSOCK(socket.stat().st_mode)
        assert stat.S_IMODE(bus.layout.socket_dir.stat().st_mode) == 0o755
        assert stat.S_IMODE(bus.layout.config.stat().st_mode) == 0o600
        assert bus.layout.config.parent != bus.layout.socket_dir  # the config is not mounted
        supervisor = await MessageBus(bus_address=bus.layout.address).connect()
        reply = await supervisor.request_name(PORTAL_NAME, NameFlag.DO_NOT_QUEUE)
        assert reply is RequestNameReply.PRIMARY_OWNER
        await bus.lock(supervisor)
        assert '<deny own="*"/>' in bus.layout.config.read_text()
        agent = await MessageBus(bus_address=bus.layout.address).connect()
        names = await agent.call(driver("ListNames"))
        assert PORTAL_NAME in names.body[0]
        owner = await agent.call(driver("GetNameOwner", "s", [PORTAL_NAME]))
        assert owner.body == [supervisor.unique_name]
        agent.disconnect()
        supervisor.disconnect()

    with_bus(tmp_path, scenario)
    assert not (tmp_path / "bus" / "bus").exists() and not (tmp_path / "bus.conf").exists()


def test_before_the_lock_only_the_portal_name_can_be_owned(tmp_path: Path) -> None:
    async def scenario(bus: PrivateBus) -> None:
        client = await MessageBus(bus_address=bus.layout.address).connect()
        other = await client.call(driver("RequestName", "su", ["org.example.Other", 4]))
        assert other.error_name == DENIED
        client.disconnect()

    with_bus(tmp_path, scenario)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (driver("RequestName", "su", [PORTAL_NAME, 2]), "claim the portal's name"),
        (driver("RequestName", "su", ["org.example.Agent", 0]), "own any name"),
        (driver("ReloadConfig"), "reload the policy"),
        (driver("UpdateActivationEnvironment", "a{ss}", [{"X": "1"}]), "change activation"),
        (driver("BecomeMonitor", "asu", [[], 0], "org.freedesktop.DBus.Monitoring"), "snoop"),
        (driver("GetStats", "", [], "org.freedesktop.DBus.Debug.Stats"), "read statistics"),
        (
            Message(
                destination=PORTAL_NAME, path="/", interface="org.example.Secret", member="Leak"
            ),
            "call a non-portal interface",
        ),
        (
            Message(
                destination=PORTAL_NAME,
                path="/",
                member="OpenFile",
                signature="ssa{sv}",
                body=["", "", {}],
            ),
            "call without naming an interface",
        ),
    ],
)
def test_after_the_lock_the_agent_cannot(tmp_path: Path, message: Message, why: str) -> None:
    async def scenario(bus: PrivateBus) -> None:
        supervisor = await MessageBus(bus_address=bus.layout.address).connect()
        await supervisor.request_name(PORTAL_NAME, NameFlag.DO_NOT_QUEUE)
        await bus.lock(supervisor)
        agent = await MessageBus(bus_address=bus.layout.address).connect()
        reply = await agent.call(message)
        assert reply.message_type is MessageType.ERROR, why
        assert reply.error_name == DENIED, (why, reply.error_name, reply.body)
        agent.disconnect()
        supervisor.disconnect()

    with_bus(tmp_path, scenario)


def test_two_sessions_have_two_buses(tmp_path: Path) -> None:
    async def main() -> None:
        first, second = PrivateBus(BusLayout(tmp_path / "a")), PrivateBus(BusLayout(tmp_path / "b"))
        await asyncio.gather(first.start(), second.start())
        try:
            owner = await MessageBus(bus_address=first.layout.address).connect()
            await owner.request_name(PORTAL_NAME, NameFlag.DO_NOT_QUEUE)
            peer = await MessageBus(bus_address=second.layout.address).connect()
            seen = await peer.call(driver("NameHasOwner", "s", [PORTAL_NAME]))
            assert seen.body == [False]
            owner.disconnect()
            peer.disconnect()
        finally:
            await asyncio.gather(first.stop(), second.stop())

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_missing_daemon_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(BusError, match="not installed"):
            await PrivateBus(BusLayout(tmp_path), daemon="no-such-dbus-daemon").start()

    asyncio.run(main())


def test_a_daemon_that_cannot_listen_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        layout = BusLayout(tmp_path)
        layout.socket_dir.mkdir()
        layout.socket.mkdir()  # a directory where the socket should go
        bus = PrivateBus(layout)
        with pytest.raises(BusError, match="did not start"):
            await bus.start()
        assert not bus.running

    asyncio.run(main())


def test_stop_ends_the_daemon_and_its_connections(tmp_path: Path) -> None:
    async def scenario(bus: PrivateBus) -> None:
        client = await MessageBus(bus_address=bus.layout.address).connect()
        await bus.stop()
        assert not bus.running
        with pytest.raises(EOFError):  # dbus-fast's way of saying the bus went away
            await asyncio.wait_for(client.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]

    with_bus(tmp_path, scenario)
    assert os.listdir(tmp_path / "bus") == []


# A supervisor of its own that starts a bus, says the daemon's pid and waits to be killed.
SUPERVISOR = """
import asyncio, sys
from pathlib import Path
from portal.bus import BusLayout, PrivateBus

async def main() -> None:
    bus = PrivateBus(BusLayout(Path(sys.argv[1])))
    await bus.start()
    print(bus._process.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_killed_supervisor_takes_its_bus_with_it(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert supervisor.stdout is not None
    daemon = int(supervisor.stdout.readline())
    ended = os.pidfd_open(daemon)  # readable once the daemon has exited
    try:
        assert Path(f"/proc/{daemon}/exe").resolve().name == "dbus-daemon"
        supervisor.kill()  # SIGKILL: no clean-up of its own runs
        supervisor.wait(timeout=30)
        readable, _, _ = select.select([ended], [], [], 30)
        assert readable, "the bus outlived its supervisor"
    finally:
        supervisor.kill()
        supervisor.wait()
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(ended, signal.SIGKILL)
        os.close(ended)
