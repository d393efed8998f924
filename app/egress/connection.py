"""What the layers of one agent connection share: whose it is, the agent's side of HTTP, the
exchange under way, the upstream kept between requests and the tunnel it may have become."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11

from app.consent import Answer
from app.egress.grants import NetworkGrants
from app.egress.policy import IPAddress, parse_host
from app.egress.records import ExchangeRecord
from app.egress.requests import Target
from app.egress.steps import ProxySettings, SendUpstream, Steps
from app.egress.uploads import UploadLedger
from app.grants import Access, NetworkGrant, network_grant_for
from app.profiles import Profile


@dataclass(slots=True)
class KeptUpstream:
    """The upstream connection of plain HTTP, kept alive between the agent's requests."""

    key: tuple[str, int, str]  # address, port, TLS name ("" for none)
    conn: h11.Connection
    spliceable: bool

    def send(self, event: Any) -> Steps:
        data = self.conn.send_with_data_passthrough(event)
        if data:
            yield SendUpstream(data)


@dataclass(frozen=True, slots=True)
class Inside:
    """The inspected tunnel a connection became: every request in it goes to this host."""

    host: str
    port: int
    addresses: Sequence[IPAddress]


@dataclass(slots=True)
class ConnectionContext:
    """One connection's state, held once and passed to each layer (none keeps a copy)."""

    session: str
    profile: Profile
    settings: ProxySettings
    # Remembered answers (network grants), looked up in memory; stored by the driver.
    grants: NetworkGrants
    # What the session's requests carried to each destination, shared the same way.
    ledger: UploadLedger
    blocked: Callable[[], bool] | None  # the user's "Block all network" switch
    # The agent's side; a fresh one once the connection became an inspected tunnel.
    agent: h11.Connection
    throttled: bool
    record: ExchangeRecord | None = None  # the exchange under way
    upstream: KeptUpstream | None = None
    inside: Inside | None = None

    def all_blocked(self) -> bool:
        return self.blocked is not None and self.blocked()

    def granted(self, target: Target, access: Access) -> NetworkGrant | None:
        return self.grants.find(
            self.session,
            self.profile.name,
            parse_host(target.host).name,
            target.port,
            access,
            time.time(),
        )

    def grant_of(self, target: Target, access: Access, answer: Answer) -> NetworkGrant | None:
        return network_grant_for(
            parse_host(target.host).name,
            target.port,
            access,
            allowed=answer.allowed,
            lifetime=answer.lifetime,
            session=self.session,
            profile=self.profile.name,
            expires_at=answer.until,
        )
