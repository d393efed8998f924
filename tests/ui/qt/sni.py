"""A StatusNotifierItem host's view of a tray icon, over dbus-fast: the watcher's list, the
item's properties and signals, and its com.canonical.dbusmenu menu (layout and clicks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

WATCHER = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
ITEM = "org.kde.StatusNotifierItem"
MENU = "com.canonical.dbusmenu"
PROPERTIES = "org.freedesktop.DBus.Properties"


class CallFailed(AssertionError):
    pass


@dataclass(frozen=True, slots=True)
class MenuEntry:
    id: int
    label: str
    enabled: bool
    toggle_state: int | None
    children: tuple[MenuEntry, ...]

    def find(self, label: str) -> MenuEntry:
        """The entry whose label starts with `label`, depth first."""
        for child in self.children:
            if child.label.startswith(label):
                return child
            try:
                return child.find(label)
            except LookupError:
                pass
        raise LookupError(f"no menu entry {label!r} in {self.labels()}")

    def labels(self) -> list[str]:
        return [c.label for c in self.children if c.label]


def _entry(raw: list[Any]) -> MenuEntry:
    ident, props, children = raw
    toggle = props.get("toggle-state")
    return MenuEntry(
        id=ident,
        # dbusmenu marks mnemonics with "_" where Qt has "&"
        label=str(props["label"].value).replace("_", "") if "label" in props else "",
        enabled=bool(props["enabled"].value) if "enabled" in props else True,
        toggle_state=int(toggle.value) if toggle is not None else None,
        children=tuple(_entry(c.value) for c in children),
    )


@dataclass
class Host:
    """One connection to the session bus, listening as a tray host does."""

    bus: MessageBus
    signals: list[tuple[float, str, str, list[Any]]] = field(default_factory=list)

    @classmethod
    async def connect(cls, address: str) -> Host:
        bus = await MessageBus(bus_address=address).connect()
        host = cls(bus)
        bus.add_message_handler(host._message)
        for interface in (ITEM, MENU, WATCHER):
            await host.call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                [f"type='signal',interface='{interface}'"],
            )
        return host

    def _message(self, message: Message) -> None:
        if message.message_type is MessageType.SIGNAL:
            self.signals.append(
                (time.monotonic(), message.sender or "", message.member or "", message.body)
            )

    def disconnect(self) -> None:
        self.bus.disconnect()

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise CallFailed(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    async def get(self, destination: str, path: str, interface: str, name: str) -> Any:
        [value] = await self.call(destination, path, PROPERTIES, "Get", "ss", [interface, name])
        return value.value

    async def items(self) -> list[str]:
        return list(await self.get(WATCHER, WATCHER_PATH, WATCHER, "RegisteredStatusNotifierItems"))

    async def watcher_up(self) -> bool:
        [owned] = await self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            [WATCHER],
        )
        return bool(owned)

    async def host_registered(self) -> bool:
        return bool(
            await self.get(WATCHER, WATCHER_PATH, WATCHER, "IsStatusNotifierHostRegistered")
        )

    async def pid_of(self, name: str) -> int:
        [pid] = await self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionUnixProcessID",
            "s",
            [name],
        )
        return int(pid)

    def seen(self, sender: str, member: str, since: float) -> list[list[Any]]:
        return [
            body for t, s, m, body in self.signals if s == sender and m == member and t >= since
        ]


@dataclass(frozen=True, slots=True)
class Item:
    """A registered StatusNotifierItem, as a host reads it."""

    host: Host
    name: str  # its unique bus name
    path: str = "/StatusNotifierItem"

    async def prop(self, name: str) -> Any:
        return await self.host.get(self.name, self.path, ITEM, name)

    async def tooltip(self) -> str:
        _icon, _pixmaps, title, _subtitle = await self.prop("ToolTip")
        return str(title)

    async def pixmap(self) -> bytes:
        """The largest of the icon's pixmaps (ARGB32), to tell the icons apart."""
        pixmaps = await self.prop("IconPixmap")
        _w, _h, data = max(pixmaps, key=lambda p: p[0] * p[1])
        return bytes(data)

    async def menu(self) -> MenuEntry:
        path = await self.prop("Menu")
        _revision, layout = await self.host.call(
            self.name, path, MENU, "GetLayout", "iias", [0, -1, []]
        )
        return _entry(layout)

    async def click(self, entry: MenuEntry) -> None:
        path = await self.prop("Menu")
        await self.host.call(
            self.name,
            path,
            MENU,
            "Event",
            "isvu",
            [entry.id, "clicked", Variant("i", 0), int(time.time())],
        )

    async def activate(self) -> None:
        """A left click on the icon."""
        await self.host.call(self.name, self.path, ITEM, "Activate", "ii", [0, 0])


async def eventually(
    probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float = 30, what: str = ""
) -> Any:
    """Awaits `probe()` until `accept` takes its value; the last value when it never does."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = await probe()
        if accept(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or probe}: last {value!r}")
