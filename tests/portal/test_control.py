"""The control interface on a real session bus: typed calls reach the app's controller, bad
arguments get a one-line refusal, a second instance cannot take the name, and a failure
inside the app never sends a traceback to the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from app.errors import SessionError
from app.grants import GrantRequest, Mode
from portal.control import FAILED, INVALID, ControlService, call
from tests.ui.qt.conftest import SessionBus
from tests.ui.qt.conftest import session_bus as session_bus  # a fixture


class Controller:
    """A small stand-in for the desktop app's controller (portal.control.ControlTarget)."""

    def __init__(self) -> None:
        self.shown = 0
        self.launched: list[tuple[str, list[GrantRequest]]] = []

    def open_window(self) -> None:
        self.shown += 1

    async def control_sessions(self) -> list[tuple[str, str, str]]:
        return [("5e55104d", "notes-organizer", "running")]

    async def control_launch(self, profile: str, grants: list[GrantRequest]) -> str:
        if profile == "broken":
            raise RuntimeError("secret internal detail /root/.ssh/id_rsa")
        self.launched.append((profile, grants))
        return "0a1b2c3d"

    async def control_stop(self, session: str) -> None:
        raise SessionError(f"no session {session!r}")

    async def control_revoke(self, session: str) -> int:
        return 2

    def control_pending(self) -> int:
        return 1


@pytest.fixture
def served(session_bus: SessionBus) -> Iterator[tuple[str, Controller]]:
    yield session_bus.address, Controller()


def test_calls_refusals_and_single_instance(served: tuple[str, Controller]) -> None:
    address, controller = served

    async def scenario() -> None:
        service = ControlService(address)
        assert await service.connect() and await service.claim()
        service.serve(controller)
        second = ControlService(address)
        assert await second.connect() and not await second.claim()
        await second.call_show()
        assert controller.shown == 1
        second.disconnect()

        client = await MessageBus(bus_address=address).connect()
        [listed] = await call(client, "ListSessions")
        assert [tuple(row) for row in listed] == [("5e55104d", "notes-organizer", "running")]
        assert await call(client, "PendingRequests") == [1]
        assert await call(client, "Revoke", "s", ["5e55104d"]) == [2]
        assert await call(
            client, "Launch", "sas", ["notes-organizer", ["/home/ana/Notes:rw", "/tmp/x"]]
        ) == ["0a1b2c3d"]
        [(_, grants)] = controller.launched
        assert grants == [
            GrantRequest(Path("/home/ana/Notes"), Mode.READ_WRITE),
            GrantRequest(Path("/tmp/x"), Mode.READ),
        ]
        for member, signature, body, why in (
            ("Revoke", "s", ["../etc"], "8 hex digits"),
            ("Launch", "sas", ["../../evil", []], "a profile is a name"),
            ("Launch", "sas", ["ok", ["relative/path"]], "absolute paths"),
            ("Launch", "sas", ["ok", ["/a\x1b[31m"]], "control characters"),
            ("Launch", "sas", ["ok", ["/x"] * 65], "at most 64"),
        ):
            with pytest.raises(DBusError) as refused:
                await call(client, member, signature, body)
            assert refused.value.type == INVALID and why in refused.value.text
        with pytest.raises(DBusError) as refused:
            await call(client, "Stop", "s", ["0a1b2c3d"])
        assert refused.value.type == FAILED and refused.value.text == "no session '0a1b2c3d'"
        with pytest.raises(DBusError) as refused:
            await call(client, "Launch", "sas", ["broken", []])
        assert refused.value.type == FAILED
        assert "secret" not in refused.value.text and "Traceback" not in refused.value.text
        client.disconnect()
        service.disconnect()

    asyncio.run(scenario())
