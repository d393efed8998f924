"""The upstream side of plain HTTP: the connection kept between the agent's requests, and
each response relayed to the agent — scrubbed of a route's key, or moved by the kernel
(splice) when it is large and nothing needs to read it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import h11

from app.egress.connection import ConnectionContext, KeptUpstream
from app.egress.policy import IPAddress, destination_key, parse_host
from app.egress.records import ExchangeRecord
from app.egress.requests import Target, client_headers, content_length, header
from app.egress.scrub import Scrubber
from app.egress.steps import (
    Connect,
    Connected,
    DropUpstream,
    Gone,
    ReadUpstream,
    Refused,
    SendClient,
    SpliceBody,
    Steps,
    Throttle,
    UpstreamAlive,
)

_ZEROS = memoryview(bytes(1024 * 1024))


class UpstreamSide:
    """Connects (or reuses the kept connection) and relays responses; raises `Refused`
    before a response has started and `Gone` once it has."""

    def __init__(self, ctx: ConnectionContext) -> None:
        self._ctx = ctx

    def connect(self, addresses: Sequence[IPAddress], target: Target) -> Steps:
        """The kept connection if it goes to one of `addresses` and is still open, else a
        new one (→ `KeptUpstream`)."""
        ctx = self._ctx
        tls_name = parse_host(target.host).name if target.tls else ""
        cached = ctx.upstream
        if cached is not None:
            fresh = (
                cached.key[0] in {str(a) for a in addresses}
                and cached.key[1:] == (target.port, tls_name)
                and cached.conn.our_state is h11.IDLE
                and (yield UpstreamAlive())
            )
            if fresh:
                return cached
            yield from self.drop()
        connected: Connected = yield Connect(addresses, target.port, tls_name or None)
        ctx.upstream = KeptUpstream(
            (connected.address, target.port, tls_name),
            h11.Connection(h11.CLIENT),
            connected.spliceable,
        )
        return ctx.upstream

    def drop(self) -> Steps:
        self._ctx.upstream = None
        yield DropUpstream()

    def relay_response(
        self,
        upstream: KeptUpstream,
        request: h11.Request,
        target: Target,
        scrub: Scrubber,
        record: ExchangeRecord,
        head: h11.Response | None = None,
    ) -> Steps:
        """The upstream's response to `request` (its `head` if already read) relayed to the
        agent."""
        ctx = self._ctx
        silence = self.silence(target)
        while head is None:
            event = yield from self.event(upstream, silence)
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
            destination, _ = destination_key(ctx.profile.network, target.host, target.port)
            for value in header(event.headers, b"set-cookie"):
                ctx.ledger.set_cookie(destination, value)
        record.status = event.status_code
        yield SendClient(
            ctx.agent.send_with_data_passthrough(
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
        if not scrub.active and ctx.settings.splice and upstream.spliceable:
            length = spliceable_length(request, event, headers)
        sent = 0
        while True:
            event = upstream.conn.next_event()
            if event is h11.NEED_DATA:
                if length is not None and length - sent >= ctx.settings.splice_min:
                    # What h11 held has gone out; the rest of the body bypasses it. The
                    # upstream connection is left mid-message for h11, so it is not reused;
                    # the agent's side is told the bytes went out, so its keep-alive goes on.
                    moved = yield SpliceBody(length - sent, silence, record)
                    if moved < length - sent:
                        raise Gone  # the upstream vanished mid-body: the agent sees a cut
                    account(ctx.agent, moved)
                    yield SendClient([ctx.agent.send(h11.EndOfMessage()) or b""])
                    return
                event = yield from self.event(upstream, silence)
            if isinstance(event, h11.Data):
                sent += len(event.data)
                data = scrub.feed(bytes(event.data)) if scrub.active else event.data
                record.down += len(event.data)
                if ctx.throttled:
                    yield Throttle(len(event.data))
            elif isinstance(event, h11.EndOfMessage):
                data = scrub.flush()
            else:
                raise Gone  # the upstream vanished mid-body; the agent sees a cut response
            out: list[bytes] = []
            if data:
                out += ctx.agent.send_with_data_passthrough(h11.Data(data=data)) or []
            if isinstance(event, h11.EndOfMessage):
                out.append(ctx.agent.send(h11.EndOfMessage()) or b"")
                yield SendClient(out)
                return
            yield SendClient(out)

    def silence(self, target: Target) -> float:
        """How long the upstream may stay silent while the agent waits for its answer: a
        route says (model APIs think and stream slowly), other hosts get `body_timeout`."""
        if target.route is not None:
            return target.route.idle_timeout
        return self._ctx.settings.body_timeout

    def event(self, upstream: KeptUpstream, silence: float) -> Steps:
        """The upstream's next h11 event, read for as long as it may stay silent."""
        while True:
            event = upstream.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = yield ReadUpstream(silence)
            except TimeoutError as e:
                raise Refused(504, "upstream", f"the upstream was silent for {silence:g} s") from e
            upstream.conn.receive_data(data)


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
