"""The portal as a session extension: each session gets its own bus, with the FileChooser portal
on it, mounted into the agent's container before the agent starts."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.consent import ConsentBroker
from app.container import BindMount, ContainerAdditions
from app.gvisor import is_gvisor
from app.sessions import SessionContext, SessionExtension
from dbus_fast import RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag
from dbus_fast.errors import DBusError

from portal.bus import (
    CONTAINER_BUS_ADDRESS,
    CONTAINER_BUS_DIR,
    PORTAL_NAME,
    BusError,
    BusLayout,
    BusLimits,
    PrivateBus,
)
from portal.filechooser import PORTAL_PATH, AgentSession, ChooserLimits, FileChooserPortal
from portal.network import HostAllower, NetworkRequests
from portal.relay import AuthRelay

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PortalSettings:
    bus: BusLimits = field(default_factory=BusLimits)
    chooser: ChooserLimits = field(default_factory=ChooserLimits)


class PortalExtension:
    """One session's bus and portal: started in `prepare`, gone after `close`."""

    def __init__(
        self,
        broker: ConsentBroker,
        settings: PortalSettings = PortalSettings(),
        hosts: HostAllower | None = None,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._hosts = hosts
        self.network: NetworkRequests | None = None
        self._bus: PrivateBus | None = None
        self._relay: AuthRelay | None = None
        self._connection: MessageBus | None = None
        self.portal: FileChooserPortal | None = None

    @property
    def address(self) -> str | None:
        """The bus's address on the host (for tests and diagnostics)."""
        return self._bus.layout.address if self._bus is not None else None

    async def prepare(self, session: SessionContext) -> ContainerAdditions:
        layout = BusLayout(session.runtime_dir)
        self._bus = PrivateBus(layout, self._settings.bus)
        await self._bus.start()
        self._connection = await MessageBus(bus_address=layout.address).connect()
        delivery = session.files
        if delivery is None:
            raise BusError("the session has no way to deliver files (no supervisor)")
        self.portal = FileChooserPortal(
            AgentSession(session.id, session.profile.name, session.profile.image),
            self._broker,
            delivery,
            self._settings.chooser,
        )
        self.portal.attach(self._connection)
        self.network = NetworkRequests(
            self.portal.who, self._broker, self._hosts, self._settings.chooser.answer_timeout
        )
        self._connection.export(PORTAL_PATH, self.network)
        try:
            reply = await self._connection.request_name(PORTAL_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            raise BusError(f"cannot own {PORTAL_NAME} on the session bus: {e}") from e
        if reply is not RequestNameReply.PRIMARY_OWNER:
            raise BusError(f"cannot own {PORTAL_NAME} on the session bus: {reply.name}")
        # From here on no one, the agent included, may own a name on this bus.
        await self._bus.lock(self._connection)
        mounted = layout.socket_dir
        if is_gvisor(session.profile.runtime):
            # gVisor's gofer connects for the agent: portal/relay.py answers for it.
            mounted = session.runtime_dir / "bus-relay"
            self._relay = AuthRelay(layout.socket)
            await self._relay.start(mounted / "bus")
        return ContainerAdditions(
            mounts=(BindMount(mounted, Path(str(CONTAINER_BUS_DIR)), read_only=True),),
            environment={"DBUS_SESSION_BUS_ADDRESS": CONTAINER_BUS_ADDRESS},
        )

    async def started(self, session: SessionContext, container_id: str) -> None:
        return None

    async def close(self) -> None:
        if self._relay is not None:
            await self._relay.close()
        if self.portal is not None:
            await self.portal.close()
        if self._connection is not None:
            with contextlib.suppress(EOFError, OSError):
                self._connection.disconnect()
            self._connection = None
        if self._bus is not None:
            await self._bus.stop()


def portal_extension(
    broker: ConsentBroker,
    settings: PortalSettings = PortalSettings(),
    hosts: HostAllower | None = None,
) -> Callable[[], SessionExtension]:
    """The ExtensionFactory for `Supervisor(extensions=…)`: the files the user picks reach
    the session through the supervisor's delivery, which the session's context carries.
    `hosts` (the egress proxy) opens a host an agent asked for and the user allowed."""
    return lambda: PortalExtension(broker, settings, hosts)
