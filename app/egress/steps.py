"""The words between the egress core and its driver: the commands the core yields, the
failures thrown back into it, and the proxy's settings.

Each command's docstring says what the driver sends back (app/egress/proxy.py performs them on
sockets; tests answer them by hand). `StartTLS` lives with the rest of interception
(app/egress/interception.py).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.consent import RequestKind
from app.egress.interception import StartTLS
from app.egress.policy import IPAddress
from app.egress.records import ExchangeRecord
from app.events import EventKind
from app.grants import NetworkGrant

if TYPE_CHECKING:
    from app.egress.tunnels import TunnelUploads, WebSocketRelay

PROXY_PORT = 3128


@dataclass(frozen=True, slots=True)
class ProxySettings:
    idle_timeout: float = 120.0  # between requests on a kept-alive connection
    head_timeout: float = 10.0  # a request head, from its first byte to its end
    body_timeout: float = 60.0  # silence while a body streams
    connect_timeout: float = 10.0
    max_head_bytes: int = 32 * 1024
    max_clients: int = 256  # connections from the agent at once
    inspect_limit: int = 1024 * 1024  # body bytes held for inspection before forwarding
    chunk: int = 256 * 1024
    # Response bodies of a known length from this size on, and tunnels, are moved by the
    # kernel (splice) rather than through Python; False keeps every byte on the h11 path.
    splice: bool = True
    splice_min: int = 1024 * 1024
    # Request heads (and names under wildcard rules) inspected and counted as data; False
    # only to measure what that costs (tests/bench/bench_proxy.py).
    inspect_heads: bool = True
    own_authorities: frozenset[str] = frozenset(
        {f"127.0.0.1:{PROXY_PORT}", f"localhost:{PROXY_PORT}"}
    )


class Refused(Exception):
    """Ends an exchange with a refusal response."""

    def __init__(self, status: int, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.rule, self.reason = status, rule, reason


class Gone(Exception):
    """The agent or the upstream went away or stalled mid-message: end without a response."""


# Commands: what the core asks its driver to do.


@dataclass(frozen=True, slots=True)
class ReadClient:
    """Read what the agent sent (→ bytes, b"" at its end); TimeoutError past `timeout`."""

    timeout: float | None


@dataclass(frozen=True, slots=True)
class SendClient:
    """Write to the agent (→ None); `drain` waits for the buffer to go down."""

    data: Sequence[bytes]
    drain: bool = True


@dataclass(frozen=True, slots=True)
class RefuseClient:
    """Write the refusal, end the agent's side and let what it still sends drain (→ None);
    the connection ends after it."""

    response: bytes


@dataclass(frozen=True, slots=True)
class ReadCredential:
    """Read a route's secret from the keyring (→ str, None if not stored; EgressError)."""

    name: str


@dataclass(frozen=True, slots=True)
class Resolve:
    """Resolve a name (→ list of addresses; OSError or TimeoutError)."""

    host: str
    port: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Ask:
    """Put a question to the user and wait for the answer (→ `Answer`)."""

    kind: RequestKind
    subject: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReadGranted:
    """The current fingerprints of the session's granted files (→ GrantedContent | None)."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the upstream connection for plain HTTP, to the first of `addresses` that answers,
    in TLS to `tls_name` if set (→ `Connected`; Refused when the session's connection limit
    is reached or none answers)."""

    addresses: Sequence[IPAddress]
    port: int
    tls_name: str | None


@dataclass(frozen=True, slots=True)
class Connected:
    address: str
    spliceable: bool  # both sides are plain sockets: a body may be moved by the kernel


@dataclass(frozen=True, slots=True)
class UpstreamAlive:
    """Whether the kept upstream connection has not been closed by its end (→ bool)."""


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Write to the upstream and wait for the buffer to go down (→ None)."""

    data: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class ReadUpstream:
    """Read what the upstream sent (→ bytes, b"" at its end); TimeoutError past `timeout`."""

    timeout: float | None


@dataclass(frozen=True, slots=True)
class DropUpstream:
    """Close the upstream connection (→ None)."""


@dataclass(frozen=True, slots=True)
class SpliceBody:
    """Move the next `length` bytes of the upstream's body to the agent by the kernel,
    counting them into `record.down` (→ how many moved; fewer means the upstream ended)."""

    length: int
    timeout: float
    record: ExchangeRecord


@dataclass(frozen=True, slots=True)
class OpenTunnel:
    """Open a plain connection for a tunnel (→ the address; Refused as for `Connect`)."""

    addresses: Sequence[IPAddress]
    port: int


@dataclass(frozen=True, slots=True)
class RelayTunnel:
    """Relay the tunnel both ways until both ends are done (→ None): `first` goes up first,
    and every chunk going up passes `uploads` (which may ask and may refuse)."""

    first: bytes
    uploads: TunnelUploads
    record: ExchangeRecord


@dataclass(frozen=True, slots=True)
class RelayWebSocket:
    """Relay an upgraded connection between the agent and the kept upstream until both ends
    are done (→ None): `first_up` and `first_down` are what each side sent already; every
    chunk passes `relay` (upload gate, frame counts, the scrubber)."""

    first_up: bytes
    first_down: bytes
    relay: WebSocketRelay


@dataclass(frozen=True, slots=True)
class CloseTunnel:
    """Close the tunnel's upstream connection (→ None)."""


@dataclass(frozen=True, slots=True)
class Throttle:
    """Wait as the session's bandwidth limit says for `amount` bytes (→ None)."""

    amount: int


@dataclass(frozen=True, slots=True)
class RememberGrant:
    """Store an answer with a lifetime as a network grant, and announce it (→ None)."""

    grant: NetworkGrant


@dataclass(frozen=True, slots=True)
class Log:
    """Emit the exchange's one event (→ None)."""

    kind: EventKind
    record: ExchangeRecord


Command = (
    ReadClient
    | SendClient
    | RefuseClient
    | ReadCredential
    | Resolve
    | Ask
    | ReadGranted
    | Connect
    | UpstreamAlive
    | SendUpstream
    | ReadUpstream
    | DropUpstream
    | SpliceBody
    | OpenTunnel
    | RelayTunnel
    | RelayWebSocket
    | CloseTunnel
    | Throttle
    | RememberGrant
    | Log
    | StartTLS
)
Steps = Generator[Command, Any, Any]


def log_exchange(kind: EventKind, record: ExchangeRecord) -> Steps:
    """The exchange's event, and if a route's key went out with it, the key's use."""
    yield Log(kind, record)
    if record.route_header:
        yield Log(EventKind.NET_CREDENTIAL, record)
