"""The egress proxy's core: one agent connection as a state machine that does no I/O.

In the manner of mitmproxy's layers, `ClientConnection.run()` is a generator: it yields a
command (app/egress/steps.py: read from the agent, connect upstream, send, ask the user,
resolve a name, relay a tunnel, log) and is sent the command's result, or has the command's
failure thrown into it (`TimeoutError`, `OSError`, `Refused`). `proxy.SessionProxy` performs
the commands on sockets; tests drive the generator by hand ("this comes in, that goes out")
with no socket at all. h11 parses both directions (the agent's side as a server, the
upstream's as a client): nothing here parses HTTP by hand.

This module reads each request head and sends it down the layers, which share one
`ConnectionContext` (app/egress/connection.py) and each raise `Refused` to end the connection
with a refusal: `Admission` (may it go out, and to which addresses), `UploadHold` (what the
head and body carry, held for approval when the upload gate says so), `UpstreamSide` (the kept
upstream connection and the response relayed back), `Tunnels` (opaque tunnels and
WebSockets) and `Interception` (a CONNECT to a host the profile inspects becomes a plain-HTTP
connection over the decrypted stream, every request of which must name that host).

Per request: classify → admit (decide by name, ask, inspect a wildcard's labels, resolve once,
decide by address) → inspect the head and body, hold them if need be → connect to the checked
address (no second lookup) → stream both ways. Each exchange ends in one `Log` (`net.request`,
`net.tunnel` or `net.refused`) naming the rule that decided.

A head must arrive whole within `head_timeout` (slowloris gets 408), at most
`max_head_bytes` (431), malformed HTTP gets h11's 400; every refusal ends the connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import h11

from app.egress.admission import Admission, Credential
from app.egress.connection import ConnectionContext
from app.egress.grants import NetworkGrants
from app.egress.hold import UploadHold
from app.egress.intercepted import Interception
from app.egress.policy import IPAddress, parse_host
from app.egress.records import ExchangeRecord
from app.egress.requests import (
    Kind,
    Refusal,
    Target,
    classify,
    header,
    refusal_response,
    upstream_headers,
)
from app.egress.scrub import Scrubber
from app.egress.steps import (
    Gone,
    ProxySettings,
    ReadClient,
    RefuseClient,
    Refused,
    Steps,
    log_exchange,
)
from app.egress.tunnels import Tunnels
from app.egress.uploads import UploadLedger
from app.egress.upstream import UpstreamSide
from app.egress.websocket import is_websocket_upgrade
from app.events import EventKind
from app.profiles import Profile


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
        self._ctx = ctx = ConnectionContext(
            session=session,
            profile=profile,
            settings=settings,
            grants=grants if grants is not None else NetworkGrants(),
            ledger=ledger if ledger is not None else UploadLedger(),
            blocked=blocked,
            agent=h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_head_bytes),
            throttled=profile.network.bandwidth is not None,
        )
        self._admission = Admission(ctx)
        self._hold = UploadHold(ctx)
        self._upstream = UpstreamSide(ctx)
        self._tunnels = Tunnels(ctx, self._hold, self._upstream)
        self._interception = Interception(ctx, self._admission)

    @property
    def record(self) -> ExchangeRecord | None:
        return self._ctx.record

    def run(self, *, crowded: bool = False) -> Steps:
        ctx = self._ctx
        try:
            if crowded:
                raise Refused(503, "limit", "too many connections from the agent")
            while True:
                request = yield from self._read_head()
                if request is None:
                    return
                record = ctx.record = ExchangeRecord(
                    method=request.method.decode("ascii", "replace")
                )
                keep = yield from self._exchange(request, record)
                ctx.record = None
                if not keep:
                    return
                if ctx.agent.our_state is h11.DONE:  # (not a fresh one, inside a tunnel)
                    ctx.agent.start_next_cycle()
        except Refused as e:
            yield from self._refuse(ctx.record or ExchangeRecord(), e)
        except Gone:
            return

    def _read_head(self) -> Steps:
        ctx = self._ctx
        deadline: float | None = None
        while True:
            try:
                event = ctx.agent.next_event()
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e
            if isinstance(event, h11.Request):
                # h11 bounds only a head still arriving; one that came in a single read
                # is measured here.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > ctx.settings.max_head_bytes:
                    raise Refused(431, "bad-request", "the request head is too large")
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise Refused(400, "bad-request", f"unexpected {type(event).__name__}")
            timeout = ctx.settings.idle_timeout if deadline is None else deadline - time.monotonic()
            try:
                data = yield ReadClient(max(timeout, 0))
            except TimeoutError as e:
                if deadline is None:
                    raise Gone from e  # an idle kept-alive connection: just close it
                raise Refused(408, "timeout", "the request head did not arrive in time") from e
            if deadline is None:
                deadline = time.monotonic() + ctx.settings.head_timeout
            try:
                ctx.agent.receive_data(data)
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e

    def _refuse(self, record: ExchangeRecord, refusal: Refused) -> Steps:
        record.refused(refusal.status, refusal.rule, refusal.reason)
        yield from log_exchange(EventKind.NET_REFUSED, record)
        yield RefuseClient(refusal_response(refusal.status, refusal.rule, refusal.reason))

    def _exchange(self, request: h11.Request, record: ExchangeRecord) -> Steps:
        """One request, sent down the layer it calls for (→ whether the connection goes on)."""
        ctx = self._ctx
        if ctx.inside is not None:
            inside = ctx.inside
            request, target, credential = yield from self._interception.decide(
                request, record, inside
            )
            if is_websocket_upgrade(request.method, request.headers):
                yield from self._tunnels.websocket(
                    request, target, inside.addresses, credential, record
                )
                return False
            return (yield from self._forward(request, target, inside.addresses, credential, record))
        target = classify(
            request.method,
            request.target,
            request.headers,
            ctx.profile.network.routes,
            ctx.settings.own_authorities,
        )
        if isinstance(target, Refusal):
            raise Refused(target.status, target.rule, target.reason)
        record.host, record.port, record.path = target.host, target.port, target.path
        if target.kind is Kind.FORWARD:
            self._admission.no_stray_placeholder(request, target)
        if target.route is not None:
            record.route = target.route.name
        credential = yield from self._admission.credential(target.route)
        addresses = yield from self._admission.admit(target, record)
        if target.kind is Kind.TUNNEL:
            if record.inspection == "inspected":
                return (yield from self._interception.start(target, addresses, record))
            yield from self._tunnels.tunnel(target, addresses, record)
            return False
        if is_websocket_upgrade(request.method, request.headers):
            yield from self._tunnels.websocket(request, target, addresses, credential, record)
            return False
        return (yield from self._forward(request, target, addresses, credential, record))

    def _forward(
        self,
        request: h11.Request,
        target: Target,
        addresses: Sequence[IPAddress],
        credential: Credential | None,
        record: ExchangeRecord,
    ) -> Steps:
        """Plain HTTP, a route's included: the body taken (and held if need be), sent on,
        and the response relayed (→ whether the connection is kept alive)."""
        ctx, hold, upstream_side = self._ctx, self._hold, self._upstream
        body = yield from hold.take(request, target, record)
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
        upstream = yield from upstream_side.connect(addresses, target)
        record.address = upstream.key[0]
        try:
            yield from upstream.send(
                h11.Request(method=request.method, target=target.path, headers=headers)
            )
            if credential is not None:
                # Where the key went: its header's name, or the query (an intercepted route).
                record.route_header = credential.header[0] if credential.header else "query"
            for chunk in body.held:
                yield from upstream.send(h11.Data(data=chunk))
            if not body.ended:
                yield from hold.stream(upstream, body, target, record)
            yield from upstream.send(h11.EndOfMessage())
            record.up = body.inspector.size
            hold.sent(body)
            scrub = Scrubber(credential.secret.encode("utf-8") if credential else b"")
            yield from upstream_side.relay_response(upstream, request, target, scrub, record)
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
            yield from upstream_side.drop()
        yield from log_exchange(EventKind.NET_REQUEST, record)
        return ctx.agent.our_state is h11.DONE and ctx.agent.their_state is h11.DONE
