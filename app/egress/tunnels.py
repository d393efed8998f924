"""Opaque tunnels and WebSockets: a CONNECT relayed as bytes, an upgraded connection relayed
as frames, with the upload gate on what goes up and, on a route, the scrubber on what comes
down."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import h11

from app.consent import Answer, RequestKind
from app.egress.admission import Credential
from app.egress.connection import ConnectionContext
from app.egress.hold import UploadHold
from app.egress.policy import IPAddress, parse_host
from app.egress.records import ExchangeRecord, who_answered
from app.egress.requests import (
    Target,
    client_headers,
    has_body,
    header,
    redact_path,
    upstream_headers,
)
from app.egress.scrub import Scrubber
from app.egress.steps import (
    Ask,
    CloseTunnel,
    Gone,
    Log,
    OpenTunnel,
    Refused,
    RelayTunnel,
    RelayWebSocket,
    SendClient,
    Steps,
    log_exchange,
)
from app.egress.uploads import UploadGate
from app.egress.upstream import UpstreamSide
from app.egress.websocket import FrameCounter
from app.events import EventKind
from app.grants import NetworkGrant

log = logging.getLogger(__name__)


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


class Tunnels:
    """The exchanges that end the connection's HTTP: an opaque tunnel, a WebSocket."""

    def __init__(self, ctx: ConnectionContext, hold: UploadHold, upstream: UpstreamSide) -> None:
        self._ctx, self._hold, self._upstream = ctx, hold, upstream

    def tunnel(
        self, target: Target, addresses: Sequence[IPAddress], record: ExchangeRecord
    ) -> Steps:
        """The CONNECT answered and its bytes relayed both ways until both ends are done."""
        ctx = self._ctx
        record.address = yield OpenTunnel(addresses, target.port)
        try:
            response = h11.Response(status_code=200, headers=[], reason=b"Connection established")
            yield SendClient([ctx.agent.send(response) or b""], drain=False)
            record.status = 200
            leftover, _ = ctx.agent.trailing_data
            gate = UploadGate.of(ctx.profile.approval)
            self._hold.waive_for_grant(target, gate, record)
            uploads = TunnelUploads(gate, target, record, self._hold.grant_for(target))
            yield RelayTunnel(leftover, uploads, record)
        except Refused as e:
            record.refused(e.status, e.rule, e.reason)
            yield CloseTunnel()
            yield from log_exchange(EventKind.NET_REFUSED, record)
            return
        except (ConnectionError, OSError) as e:
            log.debug("session %s: tunnel to %s ended: %s", ctx.session, target.host, e)
        yield CloseTunnel()
        yield Log(EventKind.NET_TUNNEL, record)

    def websocket(
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
        ctx, upstream_side = self._ctx, self._upstream
        if has_body(request.headers):
            raise Refused(400, "bad-request", "a WebSocket handshake carries no body")
        handshake = yield from self._hold.take(request, target, record)
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
        upstream = yield from upstream_side.connect(addresses, target)
        record.address = upstream.key[0]
        scrub = Scrubber(credential.secret.encode("utf-8") if credential else b"")
        try:
            yield from upstream.send(
                h11.Request(method=b"GET", target=target.path, headers=headers)
            )
            if credential is not None:
                # Where the key went: its header's name, or the query (an intercepted route).
                record.route_header = credential.header[0] if credential.header else "query"
            yield from upstream.send(h11.EndOfMessage())
            self._hold.sent(handshake)
            silence = upstream_side.silence(target)
            event = yield from upstream_side.event(upstream, silence)
            while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                event = yield from upstream_side.event(upstream, silence)
            if isinstance(event, h11.Response):  # the upstream would not switch: its answer
                yield from upstream_side.relay_response(
                    upstream, request, target, scrub, record, head=event
                )
                yield from upstream_side.drop()
                yield from log_exchange(EventKind.NET_REQUEST, record)
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
                    ctx.agent.send(
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
        gate = UploadGate.of(ctx.profile.approval, route=target.route is not None)
        self._hold.waive_for_grant(target, gate, record)
        relay = WebSocketRelay(
            TunnelUploads(gate, target, record, self._hold.grant_for(target)), scrub, record
        )
        try:
            yield RelayWebSocket(ctx.agent.trailing_data[0], upstream.conn.trailing_data[0], relay)
        except Refused as e:
            record.refused(e.status, e.rule, e.reason)
            yield from upstream_side.drop()
            yield from log_exchange(EventKind.NET_REFUSED, record)
            return
        except (ConnectionError, OSError) as e:
            log.debug("session %s: WebSocket to %s ended: %s", ctx.session, target.host, e)
        yield from upstream_side.drop()
        yield from log_exchange(EventKind.NET_REQUEST, record)
