"""An agent asks for a host its profile does not list: `org.airlock.Network1.RequestHost` on
the session's bus becomes a consent request, and a host the user allows becomes a network
grant that the session's proxy admits.

Before this, a host outside the profile was refused with no one asked (only `network.ask`
hosts prompt, at connect time); now the agent can say which host and why, once, and the
user decides. The host is checked like a profile's, and the reason is the agent's own,
untrusted words. The answer is a network grant (app/egress/grants.py): for the session, for a
time, or always for the profile, listed and revocable like a file grant.
"""

from __future__ import annotations

import logging
from typing import Protocol

from app.consent import ConsentBroker, ConsentRequest, RequestKind, new_request_id
from app.grants import Lifetime
from app.profiles import HostRule
from dbus_fast.annotations import DBusStr, DBusUInt32
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method
from pydantic import ValidationError

from portal.filechooser import INVALID_ARGUMENT, AgentSession

log = logging.getLogger(__name__)

NETWORK_INTERFACE = "org.airlock.Network1"
MAX_REASON = 2000


class HostAllower(Protocol):
    """What can open a host to a running session: the egress proxy, which keeps the answer
    as a network grant of the lifetime the user chose."""

    async def allow_host(
        self,
        session: str,
        host: str,
        port: int,
        lifetime: Lifetime = Lifetime.SESSION,
        until: float | None = None,
    ) -> bool: ...


class NetworkRequests(ServiceInterface):
    """RequestHost(host, port, reason) -> "allowed" | "denied" | "unavailable: why"."""

    def __init__(
        self,
        who: AgentSession,
        broker: ConsentBroker,
        hosts: HostAllower | None,
        answer_timeout: float,
    ) -> None:
        super().__init__(NETWORK_INTERFACE)
        self.who = who
        self._broker = broker
        self._hosts = hosts
        self._timeout = answer_timeout

    @dbus_method()
    async def RequestHost(self, host: DBusStr, port: DBusUInt32, reason: DBusStr) -> DBusStr:
        try:
            rule = HostRule(host=host, ports=(port,))
        except ValidationError as e:
            raise DBusError(
                INVALID_ARGUMENT,
                f"RequestHost: {host!r}:{port} is not a host "
                "name and port (e.g. docs.python.org, 443)",
            ) from e
        if rule.host.startswith("*."):
            raise DBusError(INVALID_ARGUMENT, "RequestHost: ask for one host, not a wildcard")
        if len(reason) > MAX_REASON:
            raise DBusError(
                INVALID_ARGUMENT, f"RequestHost: the reason is longer than {MAX_REASON} characters"
            )
        if self._hosts is None:
            return "unavailable: this session has no network proxy to open a host on"
        subject = f"{rule.host}:{port}"
        answer = await self._broker.ask(
            ConsentRequest(
                id=new_request_id(),
                session=self.who.session,
                profile=self.who.profile,
                kind=RequestKind.NETWORK,
                subject=subject,
                details={
                    "host": rule.host,
                    "port": int(port),
                    "method": "any",
                    "rule": "asked-by-agent",
                    "image": self.who.image,
                },
                reason=reason,
                timeout=self._timeout,
            )
        )
        if not answer.allowed:
            return "denied"
        if not await self._hosts.allow_host(
            self.who.session, rule.host, int(port), answer.lifetime, answer.until
        ):
            log.warning(
                "session %s: %s allowed but the session has no proxy", self.who.session, subject
            )
            return "unavailable: this session's profile allows no network at all"
        return "allowed"
