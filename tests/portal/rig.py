"""The portal's test rig: a real dbus-daemon with the session policy, the FileChooser portal on
it, a client connection, a scripted front end and a file delivery over a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from app.consent import Answer, ConsentBroker, ConsentRequest, Verdict
from app.errors import GrantError
from app.events import Event, EventBus
from app.grants import Lifetime, Mode
from portal.bus import PORTAL_NAME, BusLayout, PrivateBus
from portal.filechooser import (
    FILE_CHOOSER,
    PORTAL_PATH,
    AgentSession,
    ChooserLimits,
    FileChooserPortal,
)

WHO = AgentSession("s-test", "test-agent", "airlock-agent:bookworm")


class Scripted:
    """A front end that answers from a function of the request (or never, for `None`)."""

    def __init__(self, decide: Callable[[ConsentRequest], Answer | None]) -> None:
        self.decide = decide
        self.seen: list[ConsentRequest] = []

    async def answer(self, request: ConsentRequest) -> Answer:
        self.seen.append(request)
        answer = self.decide(request)
        if answer is None:
            await asyncio.Event().wait()  # never answers: the timeout or a Close ends it
        assert answer is not None
        return answer


def allow(
    *paths: Path, mode: Mode = Mode.READ, lifetime: Lifetime = Lifetime.ONCE
) -> Callable[[ConsentRequest], Answer]:
    return lambda request: Answer(Verdict.ALLOW, lifetime, paths=paths, mode=mode, by="test")


def deny(request: ConsentRequest) -> Answer:
    return Answer(Verdict.DENY, by="test")


@dataclass
class TempDelivery:
    """FileDelivery over a temp dir: what the Supervisor does, minus the container."""

    calls: list[tuple[str, tuple[Path, ...], Any]] = field(default_factory=list)
    refuse: str | None = None

    async def open_files(
        self,
        session: str,
        paths: Sequence[Path],
        mode: Mode,
        lifetime: Lifetime,
        until: float | None = None,
    ) -> list[PurePosixPath]:
        self.calls.append(("open", tuple(paths), (session, mode, lifetime, until)))
        if self.refuse:
            raise GrantError(self.refuse)
        return [PurePosixPath("/run/airlock/doc") / f"t{i}" / p.name for i, p in enumerate(paths)]

    async def save_files(
        self, session: str, targets: Sequence[Path], lifetime: Lifetime
    ) -> list[PurePosixPath]:
        self.calls.append(("save", tuple(targets), (session, lifetime)))
        if self.refuse:
            raise GrantError(self.refuse)
        return [
            PurePosixPath("/run/airlock/save") / f"t{i}" / p.name for i, p in enumerate(targets)
        ]


@dataclass
class Rig:
    bus: PrivateBus
    supervisor: MessageBus
    portal: FileChooserPortal
    front_end: Scripted
    delivery: TempDelivery
    events: list[Event]
    broker: ConsentBroker
    clients: list[Client] = field(default_factory=list)

    async def client(self) -> Client:
        client = Client(await MessageBus(bus_address=self.bus.layout.address).connect())
        self.clients.append(client)
        return client


@contextlib.asynccontextmanager
async def portal_rig(
    runtime: Path,
    decide: Callable[[ConsentRequest], Answer | None] = deny,
    limits: ChooserLimits | None = None,
    delivery: TempDelivery | None = None,
) -> AsyncIterator[Rig]:
    bus = PrivateBus(BusLayout(runtime))
    await bus.start()
    events: list[Event] = []
    event_bus = EventBus()
    event_bus.attach(events.append)
    front_end = Scripted(decide)
    broker = ConsentBroker(event_bus, front_end)
    delivery = delivery or TempDelivery()
    supervisor = await MessageBus(bus_address=bus.layout.address).connect()
    portal = FileChooserPortal(WHO, broker, delivery, limits or ChooserLimits())
    portal.attach(supervisor)
    await supervisor.request_name(PORTAL_NAME, NameFlag.DO_NOT_QUEUE)
    await bus.lock(supervisor)
    rig = Rig(bus, supervisor, portal, front_end, delivery, events, broker)
    try:
        yield rig
    finally:
        for client in rig.clients:
            client.disconnect()
        await portal.close()
        supervisor.disconnect()
        await bus.stop()


def plain(value: Any) -> Any:
    """D-Bus structs arrive as tuples; compare them as lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Client:
    """An agent-side client written against the public API only."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.responses: dict[str, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        bus.add_message_handler(self._on_message)

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type is MessageType.SIGNAL
            and message.member == "Response"
            and message.path in self.responses
        ):
            future = self.responses[message.path]
            if not future.done():
                code, results = message.body
                future.set_result((code, {k: plain(v.value) for k, v in results.items()}))

    def expected_path(self, token: str) -> str:
        # Spelled out from the Request documentation, not taken from the portal's code.
        assert self.bus.unique_name is not None
        sender = self.bus.unique_name.removeprefix(":").replace(".", "_")
        return f"/org/freedesktop/portal/desktop/request/{sender}/{token}"

    async def subscribe(self, path: str) -> asyncio.Future[tuple[int, dict[str, Any]]]:
        """Subscribes before calling, as the Request documentation recommends."""
        future = self.responses.setdefault(path, asyncio.get_running_loop().create_future())
        await self.driver(
            "AddMatch",
            "s",
            [
                f"type='signal',interface='org.freedesktop.portal.Request',member='Response',"
                f"path='{path}'"
            ],
        )
        return future

    async def driver(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> Message:
        return await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature=signature,
                body=body or [],
            )
        )

    async def raw(
        self,
        member: str,
        signature: str,
        body: list[Any],
        interface: str = FILE_CHOOSER,
        path: str = PORTAL_PATH,
    ) -> Message:
        return await self.bus.call(
            Message(
                destination=PORTAL_NAME,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body,
            )
        )

    async def ask(self, method: str, title: str = "Pick", **options: Variant) -> Message:
        return await self.raw(method, "ssa{sv}", ["", title, options])

    async def ask_and_wait(
        self, method: str, token: str, title: str = "Pick", timeout: float = 10, **options: Variant
    ) -> tuple[int, dict[str, Any]]:
        path = self.expected_path(token)
        future = await self.subscribe(path)
        reply = await self.ask(method, title, handle_token=Variant("s", token), **options)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        assert reply.body == [path]
        return await asyncio.wait_for(future, timeout)

    async def close_request(self, path: str) -> Message:
        return await self.raw(
            "Close", "", [], interface="org.freedesktop.portal.Request", path=path
        )

    def disconnect(self) -> None:
        if self.bus.connected:
            self.bus.disconnect()
