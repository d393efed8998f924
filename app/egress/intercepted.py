"""Inspected HTTPS in the core: a CONNECT answered here, the agent's TLS ended by the driver
(`StartTLS`), and each decrypted request decided for the CONNECT's host alone — by method and
path as plain HTTP is, with an intercepted route's key swapped in place of its placeholder.
The rules themselves are pure, in app/egress/interception.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import h11

from app.egress.admission import Admission, Credential
from app.egress.connection import ConnectionContext, Inside
from app.egress.interception import (
    H2_PREFACE,
    Handshake,
    StartTLS,
    TLSRefused,
    classify_inside,
    identity_encoding,
    intercepted_route,
    sni_refusal,
    swap_query,
)
from app.egress.policy import Action, IPAddress, decide_destination, parse_host
from app.egress.records import ExchangeRecord
from app.egress.requests import Refusal, Target
from app.egress.steps import Gone, Log, ReadClient, Refused, Steps
from app.events import EventKind


class Interception:
    """Turns a connection into an inspected tunnel, and decides the requests inside it."""

    def __init__(self, ctx: ConnectionContext, admission: Admission) -> None:
        self._ctx, self._admission = ctx, admission

    def start(
        self, target: Target, addresses: Sequence[IPAddress], record: ExchangeRecord
    ) -> Steps:
        """The CONNECT is answered, the agent's TLS ends here, and the connection goes on
        as a plain-HTTP one whose every request must name the CONNECT's target (→ whether
        it goes on)."""
        ctx = self._ctx
        established = (
            ctx.agent.send(
                h11.Response(status_code=200, headers=[], reason=b"Connection established")
            )
            or b""
        )
        host = parse_host(target.host).name
        try:
            handshake: Handshake = yield StartTLS(host, established, ctx.agent.trailing_data[0])
        except TLSRefused as e:
            # The agent's side is TLS that never came up: no HTTP answer can reach it.
            record.refused(0, e.rule, e.reason)
            yield Log(EventKind.NET_REFUSED, record)
            return False
        ctx.inside = Inside(target.host, target.port, addresses)
        ctx.agent = h11.Connection(
            h11.SERVER, max_incomplete_event_size=ctx.settings.max_head_bytes
        )
        refusal = sni_refusal(host, handshake.sni)
        if refusal is not None:
            raise Refused(refusal.status, refusal.rule, refusal.reason)
        try:
            first = yield ReadClient(ctx.settings.idle_timeout)
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
            ctx.agent.receive_data(first)
        except h11.RemoteProtocolError as e:
            raise Refused(e.error_status_hint, "bad-request", str(e)) from e
        return True

    def decide(self, request: h11.Request, record: ExchangeRecord, inside: Inside) -> Steps:
        """One decrypted request, decided by method and path as plain HTTP is (→ the request
        as it goes on, its target, and the route's credential if any); it is then forwarded
        over a verified TLS connection to the tunnel's host."""
        ctx, admission = self._ctx, self._admission
        record.host, record.port, record.inspection = inside.host, inside.port, "inspected"
        target = classify_inside(
            request.method, request.target, request.headers, inside.host, inside.port
        )
        if isinstance(target, Refusal):
            raise Refused(target.status, target.rule, target.reason)
        record.path = target.path
        if ctx.all_blocked():
            record.rule, record.decided_by = "blocked-all", "user"
            raise Refused(403, record.rule, "the user blocked all network access of agents")
        record.decided_by = "policy"
        admission.refuse_blocked(target, record)
        admission.no_stray_placeholder(request, target)
        route = intercepted_route(ctx.profile.network.routes, target.host, target.port)
        credential: Credential | None = None
        if route is not None:
            # The route's own host: everything goes, with the real key in the placeholder's
            # place (the route is the agent's trusted service, as through /routes/NAME).
            record.route, record.rule = route.name, f"route:{route.name}"
            record.reason = "credential route, swapped in place"
            target = dataclasses.replace(target, route=route)
            credential = yield from admission.credential(route)
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
                ctx.profile.network, target.host, target.port, target.method, path=target.path
            )
            record.rule, record.reason = decision.rule, decision.reason
            if decision.action is Action.DENY:
                raise Refused(403, decision.rule, decision.reason)
            # ASK: the user approved this host for the CONNECT, which covers its requests.
        record.decision = "allow"
        return request, target, credential
