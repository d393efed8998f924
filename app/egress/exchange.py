"""The egress proxy's core: one agent connection as a state machine that does no I/O.

In the manner of mitmproxy's layers, `ClientConnection.run()` is a generator: it yields a
command (read from the agent, connect upstream, send, ask the user, resolve a name, relay a
tunnel, log) and is sent the command's result, or has the command's failure thrown into it
(`TimeoutError`, `OSError`, `Refused`). `proxy.SessionProxy` performs the commands on
sockets; tests drive the generator by hand ("this comes in, that goes out") with no socket
at all. h11 parses both directions (the agent's side as a server, the upstream's as a
client): nothing here parses HTTP by hand.

A CONNECT to a host the profile inspects becomes, after `StartTLS`, a plain-HTTP connection
over the decrypted stream whose every request must name that host (app/egress/interception.py).

Per request: classify → decide by name (refused names are never resolved) → ask the user
for `ask` hosts → inspect the labels a wildcard rule left to the agent (before the name is
resolved: a lookup would carry them out) → resolve once → decide by address → inspect the
request head (path, query, header values, cookies) and hold it with the body for approval if
the upload gate says so → connect to the checked address (no second lookup) → stream both
ways. What heads and bodies carry adds up per destination over the session (`UploadLedger`).
Bodies stream in chunks; only an upload that is being inspected is held,
at most `inspect_limit` bytes. Each exchange ends in one `Log` (`net.request`, `net.tunnel`
or `net.refused`) naming the rule that decided.

A head must arrive whole within `head_timeout` (slowloris gets 408), at most
`max_head_bytes` (431), malformed HTTP gets h11's 400; every refusal ends the connection.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import h11

from app.consent import Answer, RequestKind, Verdict
from app.egress.grants import NetworkGrants
from app.egress.inspect import (
    Finding,
    GrantedContent,
    HeadScan,
    UploadInspector,
    excerpts,
    preview,
)
from app.egress.interception import (
    H2_PREFACE,
    Handshake,
    StartTLS,
    TLSRefused,
    classify_inside,
    identity_encoding,
    intercepted_route,
    sni_refusal,
    stray_placeholder,
    stray_placeholder_in,
    swap_query,
)
from app.egress.policy import (
    Action,
    Decision,
    IPAddress,
    address_refusal,
    decide_destination,
    destination_key,
    parse_host,
)
from app.egress.records import ExchangeRecord, who_answered
from app.egress.requests import (
    HOP_BY_HOP,
    Kind,
    Refusal,
    Target,
    classify,
    client_headers,
    content_length,
    credential_header,
    has_body,
    header,
    redact_path,
    refusal_response,
    upstream_headers,
)
from app.egress.scrub import Scrubber
from app.egress.uploads import UploadGate, UploadLedger
from app.egress.websocket import FrameCounter, is_websocket_upgrade
from app.errors import EgressError
from app.events import EventKind
from app.grants import Access, NetworkGrant, network_grant_for
from app.profiles import Profile, Route

log = logging.getLogger(__name__)

PROXY_PORT = 3128
# Header names a finding may name in its label (the log keeps labels): common ones only.
KNOWN_HEADERS = frozenset(
    {
        b"accept",
        b"accept-charset",
        b"accept-encoding",
        b"accept-language",
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-language",
        b"content-type",
        b"cookie",
        b"dnt",
        b"if-match",
        b"if-modified-since",
        b"if-none-match",
        b"if-range",
        b"if-unmodified-since",
        b"origin",
        b"pragma",
        b"range",
        b"referer",
        b"user-agent",
        b"x-api-key",
        b"x-forwarded-for",
        b"x-request-id",
        b"x-requested-with",
    }
)
WITHHELD_PATH = "/… (withheld: it carries a secret)"
STANDARD_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_ZEROS = memoryview(bytes(1024 * 1024))


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


# Commands: what the core asks its driver to do. The comment after each says what the
# driver sends back.


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


@dataclass(frozen=True, slots=True)
class Credential:
    header: tuple[str, str] | None  # None: it goes in the query (an intercepted route)
    secret: str = field(repr=False)


@dataclass(slots=True)
class _Upstream:
    key: tuple[str, int, str]
    conn: h11.Connection
    spliceable: bool


@dataclass(frozen=True, slots=True)
class _Inside:
    """The inspected tunnel a connection became: every request in it goes to this host."""

    host: str
    port: int
    addresses: Sequence[IPAddress]


@dataclass(slots=True)
class _Head:
    """What a request's head carries to a destination that is not a route."""

    destination: str  # as the ledger counts it
    size: int  # bytes of data new to the destination: path, query, changed header values
    scan: HeadScan
    text: bytes  # the parts, for the preview
    values: list[tuple[bytes, bytes]]  # header values to remember once sent


@dataclass(slots=True)
class _Body:
    inspector: UploadInspector
    gate: UploadGate
    head: _Head | None = None
    held: list[bytes] = field(default_factory=list)
    ended: bool = False


class TunnelUploads:
    """The upload gate applied to a tunnel's bytes as they go up (or a WebSocket's). The
    stream is opaque (TLS, frames): only its size is known, so past the gate's threshold it
    pauses for the user's approval (the bytes wait), once."""

    def __init__(
        self,
        gate: UploadGate,
        target: Target,
        record: ExchangeRecord,
        grant: Callable[[Answer], NetworkGrant | None] | None = None,
    ) -> None:
        self._gate, self._target, self._record = gate, target, record
        # What an approval with a lifetime leaves behind, for the driver to store.
        self.grant_for = grant or (lambda answer: None)

    def question(self, amount: int) -> Ask | None:
        """What to ask before `amount` more bytes go up, if anything."""
        size = self._record.up + amount
        if not self._gate.must_ask(size):
            return None
        target = self._target
        details: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "method": "CONNECT",
            "size": size,
            "tunnel": True,
            "threshold": self._gate.threshold,
        }
        if self._record.websocket:
            details.update(method="GET", path=redact_path(target.path), websocket=True)
        return Ask(RequestKind.UPLOAD, f"{target.host}:{target.port}", details)

    def answered(self, answer: Answer, amount: int) -> None:
        """Raises `Refused` unless the user approved."""
        self._record.held = True
        self._record.decided_by = who_answered(answer.by)
        if not answer.allowed:
            raise Refused(
                403,
                "upload-refused",
                f"upload of {self._record.up + amount} bytes through the "
                f"{'WebSocket' if self._record.websocket else 'tunnel'} "
                f"was not approved ({answer.by})",
            )
        self._gate.approve()

    def sent(self, amount: int) -> None:
        self._record.up += amount


class WebSocketRelay:
    """What an upgraded connection's bytes pass on their way: up, the upload gate and the
    frame count; down, the frame count and the route's scrubber."""

    def __init__(self, uploads: TunnelUploads, scrub: Scrubber, record: ExchangeRecord) -> None:
        self.uploads, self._scrub, self._record = uploads, scrub, record
        self._up, self._down = FrameCounter(), FrameCounter()

    def up(self, data: bytes) -> None:
        self._up.feed(data)
        self._record.frames_up = self._up.frames

    def down(self, data: bytes) -> bytes:
        self._down.feed(data)
        self._record.frames_down = self._down.frames
        self._record.down += len(data)
        if not self._scrub.active:
            return data
        out = self._scrub.feed(data)
        if self._down.between_frames:
            # What the scrubber kept back cannot meet the rest of the key in the next frame:
            # a frame header would stand between them. Held, it would wait for the next frame.
            out += self._scrub.flush()
        return out

    def down_ended(self) -> bytes:
        return self._scrub.flush()


class ClientConnection:
    """One connection from the agent: any number of exchanges (kept alive), or one tunnel.
    `record` is the exchange under way, if any (the driver logs it when the user cuts)."""

    def __init__(
        self,
        session: str,
        profile: Profile,
        settings: ProxySettings,
        *,
        blocked: Callable[[], bool] | None = None,
        grants: NetworkGrants | None = None,
        ledger: UploadLedger | None = None,
    ) -> None:
        self.session = session
        self.profile = profile
        self.settings = settings
        self._blocked = blocked  # the user's "Block all network" switch
        # Remembered answers (network grants), looked up in memory; stored by the driver.
        self._grants = grants if grants is not None else NetworkGrants()
        # What the session's requests carried to each destination, shared the same way.
        self._ledger = ledger if ledger is not None else UploadLedger()
        self._throttled = profile.network.bandwidth is not None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_head_bytes)
        self.record: ExchangeRecord | None = None
        self._upstream: _Upstream | None = None
        self._inside: _Inside | None = None

    def run(self, *, crowded: bool = False) -> Steps:
        try:
            if crowded:
                raise Refused(503, "limit", "too many connections from the agent")
            while True:
                request = yield from self._read_head()
                if request is None:
                    return
                record = self.record = ExchangeRecord(
                    method=request.method.decode("ascii", "replace")
                )
                keep = yield from self._exchange(request, record)
                self.record = None
                if not keep:
                    return
                if self.conn.our_state is h11.DONE:  # (not a fresh one, inside a tunnel)
                    self.conn.start_next_cycle()
        except Refused as e:
            yield from self._refuse(self.record or ExchangeRecord(), e)
        except Gone:
            return

    def _read_head(self) -> Steps:
        deadline: float | None = None
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e
            if isinstance(event, h11.Request):
                # h11 bounds only a head still arriving; one that came in a single read
                # is measured here.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self.settings.max_head_bytes:
                    raise Refused(431, "bad-request", "the request head is too large")
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise Refused(400, "bad-request", f"unexpected {type(event).__name__}")
            timeout = (
                self.settings.idle_timeout if deadline is None else deadline - time.monotonic()
            )
            try:
                data = yield ReadClient(max(timeout, 0))
            except TimeoutError as e:
                if deadline is None:
                    raise Gone from e  # an idle kept-alive connection: just close it
                raise Refused(408, "timeout", "the request head did not arrive in time") from e
            if deadline is None:
                deadline = time.monotonic() + self.settings.head_timeout
            try:
                self.conn.receive_data(data)
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e

    def _refuse(self, record: ExchangeRecord, refusal: Refused) -> Steps:
        record.refused(refusal.status, refusal.rule, refusal.reason)
        yield from self._log(EventKind.NET_REFUSED, record)
        yield RefuseClient(refusal_response(refusal.status, refusal.rule, refusal.reason))

    def _log(self, kind: EventKind, record: ExchangeRecord) -> Steps:
        """The exchange's event, and if a route's key went out with it, the key's use."""
        yield Log(kind, record)
        if record.route_header:
            yield Log(EventKind.NET_CREDENTIAL, record)

    # deciding

    def _exchange(self, request: h11.Request, record: ExchangeRecord) -> Steps:
        if self._inside is not None:
            return (yield from self._inspected(request, record, self._inside))
        target = classify(
            request.method,
            request.target,
            request.headers,
            self.profile.network.routes,
            self.settings.own_authorities,
        )
        if isinstance(target, Refusal):
            raise Refused(target.status, target.rule, target.reason)
        record.host, record.port, record.path = target.host, target.port, target.path
        if target.kind is Kind.FORWARD:
            self._no_stray_placeholder(request, target)
        if target.route is not None:
            record.route = target.route.name
        credential = yield from self._credential(target.route)
        addresses = yield from self._admit(target, record)
        if target.kind is Kind.TUNNEL:
            if record.inspection == "inspected":
                return (yield from self._intercept(target, addresses, record))
            yield from self._tunnel(target, addresses, record)
            return False
        if is_websocket_upgrade(request.method, request.headers):
            yield from self._websocket(request, target, addresses, credential, record)
            return False
        return (yield from self._forward(request, target, addresses, credential, record))

    def _admit(self, target: Target, record: ExchangeRecord) -> Steps:
        if self._blocked is not None and self._blocked():
            record.rule, record.reason = "blocked-all", "all network access of agents is blocked"
            record.decided_by = "user"
            raise Refused(403, record.rule, "the user blocked all network access of agents")
        network = self.profile.network
        intercepted = (
            intercepted_route(network.routes, target.host, target.port)
            if target.kind is Kind.TUNNEL
            else None
        )
        record.decided_by = "policy"
        if target.route is None:
            self._refuse_blocked(target, record)
        if target.route is not None:
            decision = Decision(Action.ALLOW, f"route:{target.route.name}", "credential route")
        elif intercepted is not None:
            record.route = intercepted.name
            decision = Decision(
                Action.ALLOW,
                f"route:{intercepted.name}",
                "credential route, swapped in place",
                inspect=True,
            )
        else:
            decision = decide_destination(
                network,
                target.host,
                target.port,
                target.method,
                path=None if target.kind is Kind.TUNNEL else target.path,
            )
            if decision.rule == "not-listed":
                # A host the user allowed beyond the profile (the agent asked for it).
                granted = self._granted_host(target, record)
                if granted is not None:
                    decision, record.decided_by = granted, "grant"
        record.rule, record.reason = decision.rule, decision.reason
        if target.kind is Kind.TUNNEL:
            record.inspection = "inspected" if decision.inspect else "opaque"
        if decision.action is Action.DENY:
            raise Refused(403, decision.rule, decision.reason)
        if decision.action is Action.ASK:
            answer = yield from self._ask_host(target, decision)
            record.decided_by = who_answered(answer.by)
            if not answer.allowed:
                raise Refused(
                    403,
                    decision.rule,
                    f"{target.host}:{target.port} was not approved ({answer.by})",
                )
            record.reason = f"approved ({answer.by})"
        if target.route is None and self.settings.inspect_heads:
            yield from self._check_name(target, record)
        host = parse_host(target.host)
        if host.address is not None:
            addresses: list[IPAddress] = [host.address]
        else:
            try:
                addresses = yield Resolve(host.name, target.port, self.settings.connect_timeout)
            except (OSError, TimeoutError) as e:
                raise Refused(502, "unresolved", f"cannot resolve {host.name}") from e
        refused = address_refusal(network, host, addresses)
        if refused is not None:
            raise Refused(403, refused.rule, refused.reason)
        record.decision = "allow"
        return addresses

    def _check_name(self, target: Target, record: ExchangeRecord) -> Steps:
        """A name under a wildcard rule that the session has not used yet: the labels in
        front of the rule's suffix are the agent's choice, so they are data — inspected and
        counted toward the threshold like a query string, and held before any lookup."""
        destination, chosen = destination_key(self.profile.network, target.host, target.port)
        name = parse_host(target.host).name
        if not chosen or not self._ledger.new_name(destination, name):
            return
        granted: GrantedContent | None = yield ReadGranted()
        scan = HeadScan(granted, self._ledger.pieces)
        scan.part("the host name", chosen.encode("ascii"), name=True)
        gate = UploadGate.of(self.profile.approval, before=self._ledger.before(destination))
        if gate.must_ask(len(chosen), findings=bool(scan.findings), body=False):
            if scan.findings:
                # The log keeps host names (and the question's subject): not this one.
                record.host = "…" + name[len(chosen) :]
            record.held = True
            record.findings = [f.to_json() for f in scan.findings]
            answer: Answer = yield Ask(
                RequestKind.UPLOAD,
                f"{record.host}:{target.port}",
                {
                    "host": target.host,
                    "port": target.port,
                    "method": target.method,
                    "size": gate.before + len(chosen),
                    "earlier": gate.before,
                    "hostname": True,
                    "complete": True,
                    "preview": preview(chosen.encode()),
                    "findings": record.findings,
                    "threshold": gate.threshold,
                },
            )
            record.decided_by = who_answered(answer.by)
            if not answer.allowed:
                raise Refused(
                    403,
                    "upload-refused",
                    "the host name carries data that was "
                    f"not approved ({answer.by})" + _findings_text(scan.findings),
                )
            self._ledger.approved(destination)
        else:
            self._ledger.add(destination, len(chosen))
        self._ledger.remember_name(destination, name)

    def _inspect_head(self, request: h11.Request, target: Target) -> Steps:
        """The data a request's head carries, inspected (→ `_Head`)."""
        destination, _ = destination_key(self.profile.network, target.host, target.port)
        granted: GrantedContent | None = yield ReadGranted()
        scan = HeadScan(granted, self._ledger.pieces)
        path, question, query = target.path.partition("?")
        text = [f"{target.method} {target.path}".encode("latin-1", "replace")]
        parts = [("the path", path.encode("latin-1", "replace"))]
        if question:
            parts.append(("the query", query.encode("latin-1", "replace")))
        size = len(target.path)
        values: list[tuple[bytes, bytes]] = []
        for name, value in request.headers:
            name = name.lower()
            if name in HOP_BY_HOP or name in (b"host", b"content-length"):
                continue  # not sent on, or set by Airlock from the target
            if name == b"cookie":
                value = self._ledger.agents_cookies(destination, value)
                if not value:
                    continue  # only what the host set: nothing of the agent's
                parts.append(("a cookie", value))
            elif name in KNOWN_HEADERS:
                parts.append((f"header {name.decode('ascii')}", value))
            else:
                # A name of the agent's choosing is data too (in lower case: hex or base32
                # survive that); it is not repeated in the finding's label, which the log
                # keeps.
                parts.append(("a header of its own", value))
                scan.part("a header's name", bytes(name), name=True)
            if self._ledger.new_value(destination, name, value):
                size += len(value) + (0 if name in KNOWN_HEADERS else len(name))
                values.append((name, value))
                text.append(name + b": " + value)
        if request.method not in STANDARD_METHODS:
            parts.append(("the method", bytes(request.method)))
            size += len(request.method)
        scan.parts(parts)
        return _Head(destination, size, scan, b"\n".join(text), values)

    def _sent(self, body: _Body) -> None:
        """The request went out: its data counts toward the destination's threshold (or the
        count starts again if the user approved it)."""
        head = body.head
        if head is None:
            return
        if body.gate.approved:
            self._ledger.approved(head.destination)
        else:
            self._ledger.add(head.destination, head.size + body.inspector.size)
        for name, value in head.values:
            self._ledger.remember_value(head.destination, name, value)

    def _granted(self, target: Target, access: Access) -> NetworkGrant | None:
        return self._grants.find(
            self.session,
            self.profile.name,
            parse_host(target.host).name,
            target.port,
            access,
            time.time(),
        )

    def _refuse_blocked(self, target: Target, record: ExchangeRecord) -> None:
        """A host the user blocked (a remembered refusal, e.g. "Block this host" in the
        Network tab) is refused before the profile is asked: the user's newest word on a
        host outranks the profile's allow list. A route's own base URL is not a host the
        agent names, so it is not blocked this way."""
        try:
            grant = self._granted(target, Access.CONNECT)
        except ValueError:
            return  # an invalid host: the profile's decision refuses it
        if grant is None or grant.allowed:
            return
        record.grants.append(grant.id)
        record.decided_by = "grant"
        record.rule = f"grant:{grant.id}"
        raise Refused(
            403, record.rule, f"{target.host}:{target.port} is blocked by the user ({grant.id})"
        )

    def _granted_host(self, target: Target, record: ExchangeRecord) -> Decision | None:
        grant = self._granted(target, Access.CONNECT)
        if grant is None or not grant.allowed:
            return None
        record.grants.append(grant.id)
        return Decision(
            Action.ALLOW,
            f"grant:{grant.id}",
            f"{target.host}:{target.port} is granted ({grant.lifetime})",
        )

    def _grant_of(self, target: Target, access: Access, answer: Answer) -> NetworkGrant | None:
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

    def _ask_host(self, target: Target, decision: Decision) -> Steps:
        assert self.record is not None
        grant = self._granted(target, Access.CONNECT)
        if grant is not None:
            self.record.grants.append(grant.id)
            return Answer(Verdict.ALLOW if grant.allowed else Verdict.DENY, by=f"grant {grant.id}")
        self.record.asked = True
        answer: Answer = yield Ask(
            RequestKind.NETWORK,
            f"{target.host}:{target.port}",
            {
                "host": target.host,
                "port": target.port,
                "method": target.method,
                "rule": decision.rule,
            },
        )
        grant = self._grant_of(target, Access.CONNECT, answer)
        if grant is not None:
            yield RememberGrant(grant)
            self.record.grants.append(grant.id)
        return answer

    def _upload_granted(self, target: Target, gate: UploadGate, record: ExchangeRecord) -> None:
        """An upload grant for the destination waives the threshold (findings still ask)."""
        grant = self._granted(target, Access.UPLOAD)
        if grant is not None and grant.allowed:
            gate.approve()
            record.grants.append(grant.id)

    def _upload_grant(self, target: Target) -> Callable[[Answer], NetworkGrant | None]:
        def grant(answer: Answer) -> NetworkGrant | None:
            if not answer.allowed:
                return None  # a refused upload is asked about again next time
            made = self._grant_of(target, Access.UPLOAD, answer)
            if made is not None and self.record is not None:
                self.record.grants.append(made.id)
            return made

        return grant

    def _credential(self, route: Route | None) -> Steps:
        if route is None:
            return None
        try:
            secret = yield ReadCredential(route.secret)
        except EgressError as e:
            log.warning("session %s: %s", self.session, e)
            raise Refused(
                502, f"route:{route.name}", "the route's credential cannot be read from the keyring"
            ) from e
        if secret is None:
            raise Refused(
                502,
                f"route:{route.name}",
                f"no credential stored for this route: run `airlock secret set {route.secret}`",
            )
        try:
            return Credential(credential_header(route, secret), secret)
        except ValueError as e:
            raise Refused(502, f"route:{route.name}", str(e)) from e

    # inspected HTTPS (app/egress/interception.py)

    def _intercept(
        self, target: Target, addresses: Sequence[IPAddress], record: ExchangeRecord
    ) -> Steps:
        """The CONNECT is answered, the agent's TLS ends here, and the connection goes on
        as a plain-HTTP one whose every request must name the CONNECT's target."""
        established = (
            self.conn.send(
                h11.Response(status_code=200, headers=[], reason=b"Connection established")
            )
            or b""
        )
        host = parse_host(target.host).name
        try:
            handshake: Handshake = yield StartTLS(host, established, self.conn.trailing_data[0])
        except TLSRefused as e:
            # The agent's side is TLS that never came up: no HTTP answer can reach it.
            record.refused(0, e.rule, e.reason)
            yield Log(EventKind.NET_REFUSED, record)
            return False
        self._inside = _Inside(target.host, target.port, addresses)
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.settings.max_head_bytes
        )
        refusal = sni_refusal(host, handshake.sni)
        if refusal is not None:
            raise Refused(refusal.status, refusal.rule, refusal.reason)
        try:
            first = yield ReadClient(self.settings.idle_timeout)
        except TimeoutError as e:
            raise Gone from e
        if first.startswith(H2_PREFACE[:12]):  # "PRI * HTTP/2": no HTTP/1 request
            raise Refused(
                505,
                "http2",
                f"the agent spoke HTTP/2 to {host}, which Airlock "
                "does not inspect (it offers only http/1.1)",
            )
        try:
            self.conn.receive_data(first)
        except h11.RemoteProtocolError as e:
            raise Refused(e.error_status_hint, "bad-request", str(e)) from e
        return True

    def _inspected(self, request: h11.Request, record: ExchangeRecord, inside: _Inside) -> Steps:
        """One decrypted request: decided by method and path as plain HTTP is, then
        forwarded over a verified TLS connection to the tunnel's host."""
        record.host, record.port, record.inspection = inside.host, inside.port, "inspected"
        target = classify_inside(
            request.method, request.target, request.headers, inside.host, inside.port
        )
        if isinstance(target, Refusal):
            raise Refused(target.status, target.rule, target.reason)
        record.path = target.path
        if self._blocked is not None and self._blocked():
            record.rule, record.decided_by = "blocked-all", "user"
            raise Refused(403, record.rule, "the user blocked all network access of agents")
        record.decided_by = "policy"
        self._refuse_blocked(target, record)
        self._no_stray_placeholder(request, target)
        route = intercepted_route(self.profile.network.routes, target.host, target.port)
        credential: Credential | None = None
        if route is not None:
            # The route's own host: everything goes, with the real key in the placeholder's
            # place (the route is the agent's trusted service, as through /routes/NAME).
            record.route, record.rule = route.name, f"route:{route.name}"
            record.reason = "credential route, swapped in place"
            target = dataclasses.replace(target, route=route)
            credential = yield from self._credential(route)
            assert credential is not None
            if route.query is not None:
                credential = Credential(None, credential.secret)
                target = dataclasses.replace(
                    target, path=swap_query(target.path, route.query, credential.secret)
                )
            # (The target sent on is `target.path`; this request keeps the agent's.)
            request = h11.Request(
                method=request.method,
                target=request.target,
                headers=identity_encoding(request.headers),
            )
        else:
            decision = decide_destination(
                self.profile.network, target.host, target.port, target.method, path=target.path
            )
            record.rule, record.reason = decision.rule, decision.reason
            if decision.action is Action.DENY:
                raise Refused(403, decision.rule, decision.reason)
            # ASK: the user approved this host for the CONNECT, which covers its requests.
        record.decision = "allow"
        if is_websocket_upgrade(request.method, request.headers):
            yield from self._websocket(request, target, inside.addresses, credential, record)
            return False
        return (yield from self._forward(request, target, inside.addresses, credential, record))

    def _no_stray_placeholder_in_body(self, held: list[bytes], target: Target) -> None:
        """The same, for the part of a body held for inspection (`inspect_limit`)."""
        stray = stray_placeholder_in(self.profile.network.routes, target.host, target.port, held)
        if stray is not None:
            raise Refused(
                403,
                "placeholder",
                f"the placeholder key of route {stray.name!r} "
                f"was in a body sent to {target.host}, which is not the route's "
                "host",
            )

    def _no_stray_placeholder(self, request: h11.Request, target: Target) -> None:
        stray = stray_placeholder(
            self.profile.network.routes, target.host, target.port, request.target, request.headers
        )
        if stray is not None:
            raise Refused(
                403,
                "placeholder",
                f"the placeholder key of route {stray.name!r} "
                f"was sent to {target.host}, which is not the route's host; its "
                f"real key goes only to {stray.upstream}",
            )

    # tunnels

    def _tunnel(
        self, target: Target, addresses: Sequence[IPAddress], record: ExchangeRecord
    ) -> Steps:
        record.address = yield OpenTunnel(addresses, target.port)
        try:
            response = h11.Response(status_code=200, headers=[], reason=b"Connection established")
            yield SendClient([self.conn.send(response) or b""], drain=False)
            record.status = 200
            leftover, _ = self.conn.trailing_data
            gate = UploadGate.of(self.profile.approval)
            self._upload_granted(target, gate, record)
            uploads = TunnelUploads(gate, target, record, self._upload_grant(target))
            yield RelayTunnel(leftover, uploads, record)
        except Refused as e:
            record.refused(e.status, e.rule, e.reason)
            yield CloseTunnel()
            yield from self._log(EventKind.NET_REFUSED, record)
            return
        except (ConnectionError, OSError) as e:
            log.debug("session %s: tunnel to %s ended: %s", self.session, target.host, e)
        yield CloseTunnel()
        yield Log(EventKind.NET_TUNNEL, record)

    # WebSocket

    def _websocket(
        self,
        request: h11.Request,
        target: Target,
        addresses: Sequence[IPAddress],
        credential: Credential | None,
        record: ExchangeRecord,
    ) -> Steps:
        """A WebSocket handshake goes on with the credential added (on a route), and once the
        upstream switches, the frames are relayed both ways, counted, and logged at the end.
        On a route no extension is offered: permessage-deflate would hide an echoed key from
        the scrubber."""
        if has_body(request.headers):
            raise Refused(400, "bad-request", "a WebSocket handshake carries no body")
        handshake = yield from self._take_body(request, target, record)
        record.websocket = True
        default_port = 443 if target.tls else 80
        headers = upstream_headers(
            request.headers,
            parse_host(target.host).name,
            target.port,
            default_port,
            credential.header if credential else None,
        )
        if credential is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"sec-websocket-extensions"]
        headers += [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
        upstream = yield from self._connect_upstream(addresses, target)
        record.address = upstream.key[0]
        scrub = Scrubber(credential.secret.encode("utf-8") if credential else b"")
        try:
            yield from self._send(
                upstream, h11.Request(method=b"GET", target=target.path, headers=headers)
            )
            if credential is not None:
                # Where the key went: its header's name, or the query (an intercepted route).
                record.route_header = credential.header[0] if credential.header else "query"
            yield from self._send(upstream, h11.EndOfMessage())
            self._sent(handshake)
            silence = self._upstream_silence(target)
            event = yield from self._upstream_event(upstream, silence)
            while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                event = yield from self._upstream_event(upstream, silence)
            if isinstance(event, h11.Response):  # the upstream would not switch: its answer
                yield from self._relay_response(
                    upstream, request, target, scrub, record, head=event
                )
                yield from self._drop_upstream()
                yield from self._log(EventKind.NET_REQUEST, record)
                return
            if not isinstance(event, h11.InformationalResponse):
                raise Refused(502, "upstream", "the upstream closed without a response")
            if scrub.active and header(event.headers, b"sec-websocket-extensions"):
                raise Refused(
                    502,
                    "upstream",
                    "the route's upstream chose a WebSocket "
                    "extension, which Airlock cannot check for the credential",
                )
            record.status = 101
            yield SendClient(
                [
                    self.conn.send(
                        h11.InformationalResponse(
                            status_code=101,
                            reason=scrub.whole(bytes(event.reason)),
                            headers=client_headers(
                                [(k, scrub.whole(v)) for k, v in event.headers],
                                {b"connection": b"Upgrade", b"upgrade": b"websocket"},
                            ),
                        )
                    )
                    or b""
                ]
            )
        except h11.LocalProtocolError as e:
            raise Refused(502, "upstream", "the request could not be sent on as valid HTTP") from e
        except h11.ProtocolError as e:
            detail = "" if credential else f": {e}"
            raise Refused(502, "upstream", f"the upstream sent bad HTTP{detail}") from e
        except (ConnectionError, OSError) as e:
            if record.status:
                raise Gone from e
            raise Refused(502, "upstream", f"the upstream connection failed: {e}") from e
        gate = UploadGate.of(self.profile.approval, route=target.route is not None)
        self._upload_granted(target, gate, record)
        relay = WebSocketRelay(
            TunnelUploads(gate, target, record, self._upload_grant(target)), scrub, record
        )
        try:
            yield RelayWebSocket(self.conn.trailing_data[0], upstream.conn.trailing_data[0], relay)
        except Refused as e:
            record.refused(e.status, e.rule, e.reason)
            yield from self._drop_upstream()
            yield from self._log(EventKind.NET_REFUSED, record)
            return
        except (ConnectionError, OSError) as e:
            log.debug("session %s: WebSocket to %s ended: %s", self.session, target.host, e)
        yield from self._drop_upstream()
        yield from self._log(EventKind.NET_REQUEST, record)

    # plain HTTP and routes

    def _forward(
        self,
        request: h11.Request,
        target: Target,
        addresses: Sequence[IPAddress],
        credential: Credential | None,
        record: ExchangeRecord,
    ) -> Steps:
        body = yield from self._take_body(request, target, record)
        default_port = 443 if target.tls else 80
        headers = upstream_headers(
            request.headers,
            parse_host(target.host).name,
            target.port,
            default_port,
            credential.header if credential else None,
        )
        if header(request.headers, b"transfer-encoding"):
            headers.append((b"transfer-encoding", b"chunked"))
        upstream = yield from self._connect_upstream(addresses, target)
        record.address = upstream.key[0]
        try:
            yield from self._send(
                upstream, h11.Request(method=request.method, target=target.path, headers=headers)
            )
            if credential is not None:
                # Where the key went: its header's name, or the query (an intercepted route).
                record.route_header = credential.header[0] if credential.header else "query"
            for chunk in body.held:
                yield from self._send(upstream, h11.Data(data=chunk))
            if not body.ended:
                yield from self._stream_body(upstream, body, target, record)
            yield from self._send(upstream, h11.EndOfMessage())
            record.up = body.inspector.size
            self._sent(body)
            scrub = Scrubber(credential.secret.encode("utf-8") if credential else b"")
            yield from self._relay_response(upstream, request, target, scrub, record)
        except h11.LocalProtocolError as e:
            # What could not be sent as valid HTTP: h11's text quotes it, and on a route it
            # holds the credential.
            raise Refused(502, "upstream", "the request could not be sent on as valid HTTP") from e
        except h11.ProtocolError as e:
            # The upstream's bytes, quoted: on a route they may echo the credential.
            detail = "" if credential else f": {e}"
            raise Refused(502, "upstream", f"the upstream sent bad HTTP{detail}") from e
        except (ConnectionError, OSError) as e:
            if record.status:
                raise Gone from e  # the response had started: all we can do is close
            raise Refused(502, "upstream", f"the upstream connection failed: {e}") from e
        # (On any failure the connection ends, and the driver drops the upstream with it.)
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
            upstream.conn.start_next_cycle()
        else:
            yield from self._drop_upstream()
        yield from self._log(EventKind.NET_REQUEST, record)
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def _take_body(self, request: h11.Request, target: Target, record: ExchangeRecord) -> Steps:
        """Reads the body up to the inspection limit, inspects it and the head, and holds
        them for the user's approval when the upload gate says so."""
        head: _Head | None = None
        granted: GrantedContent | None = None
        if target.route is None and self.settings.inspect_heads:
            # A route is the agent's trusted service: sending it granted files is its job.
            head = yield from self._inspect_head(request, target)
            granted = head.scan.granted
        elif target.route is None and has_body(request.headers):
            granted = yield ReadGranted()
        gate = UploadGate.of(
            self.profile.approval,
            route=target.route is not None,
            before=0 if head is None else self._ledger.before(head.destination) + head.size,
        )
        if target.route is None:
            self._upload_granted(target, gate, record)
        head_findings = bool(head and head.scan.findings)
        if not has_body(request.headers):
            if (yield from self._body_event()) is not None:  # h11's EndOfMessage, at once
                raise Refused(400, "bad-request", "a body where none was declared")
            body = _Body(UploadInspector(), gate, head, ended=True)
            if head is not None and gate.must_ask(0, findings=head_findings, body=False):
                yield from self._hold(request, target, body, 0, record)
            return body
        body = _Body(UploadInspector(granted), gate, head)
        if self.conn.they_are_waiting_for_100_continue:
            yield SendClient(
                [self.conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""],
                drain=False,
            )
        while body.inspector.size < self.settings.inspect_limit:
            chunk = yield from self._body_event()
            if chunk is None:
                body.ended = True
                body.inspector.finish()
                break
            body.inspector.feed(chunk)
            body.held.append(chunk)
        if target.route is None:
            self._no_stray_placeholder_in_body(body.held, target)
        declared = content_length(request.headers)
        size = declared if declared is not None else body.inspector.size + (not body.ended)
        if gate.must_ask(size, findings=bool(body.inspector.findings) or head_findings):
            yield from self._hold(request, target, body, size, record)
        return body

    def _hold(
        self, request: h11.Request, target: Target, body: _Body, size: int, record: ExchangeRecord
    ) -> Steps:
        inspector, head = body.inspector, body.head
        findings = [*(head.scan.findings if head else ()), *inspector.findings]
        # The log keeps paths and methods: not one that carries a secret.
        if any(" in the path" in f.label for f in findings):
            record.path = WITHHELD_PATH
        if any(" in the method" in f.label for f in findings):
            record.method = "(withheld: it carries a secret)"
        record.held = True
        record.findings = [f.to_json() for f in findings]
        record.sha256 = inspector.sha256 if body.ended else ""
        mime = b",".join(header(request.headers, b"content-type")).decode("latin-1")
        earlier = body.gate.before - (head.size if head else 0)
        shown = size if inspector.size or head is None else head.size
        details: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "method": target.method,
            "path": redact_path(target.path),
            "size": shown,
            "complete": body.ended,
            "inspected": inspector.size,
            "mime": mime[:200],
            "sha256": inspector.sha256,
            "preview": preview(inspector.head if inspector.size or head is None else head.text),
            "findings": record.findings,
            **({"inspection": record.inspection} if record.inspection else {}),
        }
        if inspector.findings:
            # Where in the body each finding is, for the dialog to scroll to (the preview
            # alone shows only the start).
            details["excerpts"] = excerpts(b"".join(body.held), inspector.findings)
        if head is not None:
            details.update(
                head=preview(head.text),
                head_size=head.size,
                earlier=earlier,
                threshold=body.gate.threshold,
            )
        answer: Answer = yield Ask(RequestKind.UPLOAD, f"{target.host}:{target.port}", details)
        record.decided_by = who_answered(answer.by)
        if not answer.allowed:
            what = (
                f"the upload of {shown} bytes"
                if inspector.size or not head
                else "the data in the request"
            )
            raise Refused(
                403,
                "upload-refused",
                f"{what} was not approved ({answer.by})" + _findings_text(findings),
            )
        body.gate.approve()
        record.reason = f"upload approved ({answer.by})"
        grant = self._upload_grant(target)(answer)
        if grant is not None:
            yield RememberGrant(grant)

    def _stream_body(
        self, upstream: _Upstream, body: _Body, target: Target, record: ExchangeRecord
    ) -> Steps:
        while (chunk := (yield from self._body_event())) is not None:
            new = body.inspector.feed(chunk)
            if body.gate.must_ask(body.inspector.size, findings=bool(new)):
                # Something turned up past what was approved: ask again before it leaves.
                yield from self._hold_more(target, body, new, record)
            if self._throttled:
                yield Throttle(len(chunk))
            yield from self._send(upstream, h11.Data(data=chunk))
        new = body.inspector.finish()
        if body.gate.must_ask(body.inspector.size, findings=bool(new)):
            yield from self._hold_more(target, body, new, record)
        body.ended = True

    def _hold_more(
        self, target: Target, body: _Body, new: list[Finding], record: ExchangeRecord
    ) -> Steps:
        record.held = True
        record.findings += [f.to_json() for f in new]
        answer: Answer = yield Ask(
            RequestKind.UPLOAD,
            f"{target.host}:{target.port}",
            {
                "host": target.host,
                "port": target.port,
                "method": target.method,
                "path": redact_path(target.path),
                "size": body.inspector.size,
                "complete": False,
                "findings": [f.to_json() for f in new],
            },
        )
        record.decided_by = who_answered(answer.by)
        if not answer.allowed:
            # The upstream has part of the body; dropping the connection leaves it incomplete.
            raise Refused(
                403,
                "upload-refused",
                "the rest of the upload was not approved" + _findings_text(new),
            )

    def _body_event(self) -> Steps:
        """The next chunk of the agent's body, or None at its end."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is not h11.NEED_DATA:
                raise Refused(400, "bad-request", "the request body ended early")
            try:
                data = yield ReadClient(self.settings.body_timeout)
            except TimeoutError as e:
                raise Refused(408, "timeout", "the request body stalled") from e
            try:
                self.conn.receive_data(data)
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e

    def _relay_response(
        self,
        upstream: _Upstream,
        request: h11.Request,
        target: Target,
        scrub: Scrubber,
        record: ExchangeRecord,
        head: h11.Response | None = None,
    ) -> Steps:
        silence = self._upstream_silence(target)
        while head is None:
            event = yield from self._upstream_event(upstream, silence)
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue was ours to give; other 1xx are not relayed
            if not isinstance(event, h11.Response):
                raise Refused(502, "upstream", "the upstream closed without a response")
            head = event
        event = head
        if scrub.active and header(event.headers, b"content-encoding") not in ([], [b"identity"]):
            # Compressed, the credential an upstream echoes cannot be found to be masked.
            raise Refused(
                502,
                "upstream",
                "the route's upstream answered compressed, which "
                "Airlock cannot check for the credential",
            )
        headers = client_headers([(k, scrub.whole(v)) for k, v in event.headers])
        if target.route is None:
            # A cookie the host set is the host's data when the agent sends it back.
            destination, _ = destination_key(self.profile.network, target.host, target.port)
            for value in header(event.headers, b"set-cookie"):
                self._ledger.set_cookie(destination, value)
        record.status = event.status_code
        yield SendClient(
            self.conn.send_with_data_passthrough(
                h11.Response(
                    status_code=event.status_code,
                    headers=headers,
                    reason=scrub.whole(bytes(event.reason)),
                )
            )
            or [],
            drain=False,
        )
        length = None
        if not scrub.active and self.settings.splice and upstream.spliceable:
            length = spliceable_length(request, event, headers)
        sent = 0
        while True:
            event = upstream.conn.next_event()
            if event is h11.NEED_DATA:
                if length is not None and length - sent >= self.settings.splice_min:
                    # What h11 held has gone out; the rest of the body bypasses it. The
                    # upstream connection is left mid-message for h11, so it is not reused;
                    # the agent's side is told the bytes went out, so its keep-alive goes on.
                    moved = yield SpliceBody(length - sent, silence, record)
                    if moved < length - sent:
                        raise Gone  # the upstream vanished mid-body: the agent sees a cut
                    account(self.conn, moved)
                    yield SendClient([self.conn.send(h11.EndOfMessage()) or b""])
                    return
                event = yield from self._upstream_event(upstream, silence)
            if isinstance(event, h11.Data):
                sent += len(event.data)
                data = scrub.feed(bytes(event.data)) if scrub.active else event.data
                record.down += len(event.data)
                if self._throttled:
                    yield Throttle(len(event.data))
            elif isinstance(event, h11.EndOfMessage):
                data = scrub.flush()
            else:
                raise Gone  # the upstream vanished mid-body; the agent sees a cut response
            out: list[bytes] = []
            if data:
                out += self.conn.send_with_data_passthrough(h11.Data(data=data)) or []
            if isinstance(event, h11.EndOfMessage):
                out.append(self.conn.send(h11.EndOfMessage()) or b"")
                yield SendClient(out)
                return
            yield SendClient(out)

    def _upstream_silence(self, target: Target) -> float:
        """How long the upstream may stay silent while the agent waits for its answer: a
        route says (model APIs think and stream slowly), other hosts get `body_timeout`."""
        if target.route is not None:
            return target.route.idle_timeout
        return self.settings.body_timeout

    def _upstream_event(self, upstream: _Upstream, silence: float) -> Steps:
        while True:
            event = upstream.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = yield ReadUpstream(silence)
            except TimeoutError as e:
                raise Refused(504, "upstream", f"the upstream was silent for {silence:g} s") from e
            upstream.conn.receive_data(data)

    # the upstream connection, kept alive between the agent's requests

    def _connect_upstream(self, addresses: Sequence[IPAddress], target: Target) -> Steps:
        tls_name = parse_host(target.host).name if target.tls else ""
        cached = self._upstream
        if cached is not None:
            fresh = (
                cached.key[0] in {str(a) for a in addresses}
                and cached.key[1:] == (target.port, tls_name)
                and cached.conn.our_state is h11.IDLE
                and (yield UpstreamAlive())
            )
            if fresh:
                return cached
            yield from self._drop_upstream()
        connected: Connected = yield Connect(addresses, target.port, tls_name or None)
        self._upstream = _Upstream(
            (connected.address, target.port, tls_name),
            h11.Connection(h11.CLIENT),
            connected.spliceable,
        )
        return self._upstream

    def _drop_upstream(self) -> Steps:
        self._upstream = None
        yield DropUpstream()

    def _send(self, upstream: _Upstream, event: Any) -> Steps:
        data = upstream.conn.send_with_data_passthrough(event)
        if data:
            yield SendUpstream(data)


def account(conn: h11.Connection, amount: int) -> None:
    """Tells h11 that `amount` body bytes went to its peer by another way (splice): its
    Content-Length writer only counts them, and what it returns is dropped unwritten."""
    while amount:
        step = min(amount, len(_ZEROS))
        conn.send_with_data_passthrough(h11.Data(data=cast(bytes, _ZEROS[:step])))
        amount -= step


def spliceable_length(
    request: h11.Request, response: h11.Response, sent_headers: list[tuple[bytes, bytes]]
) -> int | None:
    """The body length of a response that may be spliced: one with a Content-Length the
    agent's side sends on unchanged, and a body at all (not HEAD, 1xx, 204 or 304)."""
    if request.method == b"HEAD" or response.status_code in (204, 304):
        return None
    if header(response.headers, b"transfer-encoding"):
        return None
    length = content_length(response.headers)
    if length is None or content_length(sent_headers) != length:
        return None
    return length


def _findings_text(findings: Sequence[Finding]) -> str:
    if not findings:
        return ""
    return "; it carries: " + ", ".join(sorted({f.kind for f in findings}))
