"""Which well-known names are owned on a D-Bus bus (a notification server, a tray host)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dbus_fast import Message
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError


async def owned_names(address: str, names: Sequence[str], seconds: float) -> dict[str, bool]:
    """name → whether it has an owner now (D-Bus activation does not count: nothing answers
    until something is started). Raises OSError, DBusError, ValueError, EOFError or
    TimeoutError."""
    bus = await asyncio.wait_for(MessageBus(bus_address=address).connect(), seconds)
    try:
        reply = await asyncio.wait_for(
            bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="ListNames",
                )
            ),
            seconds,
        )
    finally:
        bus.disconnect()
    if reply is None or not reply.body:
        raise DBusError("org.freedesktop.DBus.Error.Failed", "no answer to ListNames")
    owned = set(reply.body[0])
    return {name: name in owned for name in names}
