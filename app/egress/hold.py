"""What a request carries out: its head and body read from the agent, inspected, counted
toward the destination's threshold, and held for the user's approval when the upload gate
says so.

Bodies stream in chunks; only an upload that is being inspected is held, at most
`inspect_limit` bytes. What heads and bodies carry adds up per destination over the session
(`UploadLedger`); a route is the agent's trusted service, so its heads are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from app.consent import Answer, RequestKind
from app.egress.connection import ConnectionContext, KeptUpstream
from app.egress.inspect import (
    Finding,
    GrantedContent,
    HeadScan,
    UploadInspector,
    excerpts,
    findings_text,
    preview,
)
from app.egress.interception import stray_placeholder_in
from app.egress.policy import destination_key
from app.egress.records import ExchangeRecord, who_answered
from app.egress.requests import HOP_BY_HOP, Target, content_length, has_body, header, redact_path
from app.egress.steps import (
    Ask,
    ReadClient,
    ReadGranted,
    Refused,
    RememberGrant,
    SendClient,
    Steps,
    Throttle,
)
from app.egress.uploads import UploadGate
from app.grants import Access, NetworkGrant

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


@dataclass(slots=True)
class Head:
    """What a request's head carries to a destination that is not a route."""

    destination: str  # as the ledger counts it
    size: int  # bytes of data new to the destination: path, query, changed header values
    scan: HeadScan
    text: bytes  # the parts, for the preview
    values: list[tuple[bytes, bytes]]  # header values to remember once sent


@dataclass(slots=True)
class Body:
    """A request's body as far as it was read: the chunks held for inspection (sent on once
    approved), and whether the agent's side of it has ended."""

    inspector: UploadInspector
    gate: UploadGate
    head: Head | None = None
    held: list[bytes] = field(default_factory=list)
    ended: bool = False


class UploadHold:
    """Reads, inspects and holds what a request carries; raises `Refused` when the user
    does not approve."""

    def __init__(self, ctx: ConnectionContext) -> None:
        self._ctx = ctx

    def take(self, request: h11.Request, target: Target, record: ExchangeRecord) -> Steps:
        """Reads the body up to the inspection limit, inspects it and the head, and holds
        them for the user's approval when the upload gate says so (→ `Body`)."""
        ctx = self._ctx
        head: Head | None = None
        granted: GrantedContent | None = None
        if target.route is None and ctx.settings.inspect_heads:
            # A route is the agent's trusted service: sending it granted files is its job.
            head = yield from self._inspect_head(request, target)
            granted = head.scan.granted
        elif target.route is None and has_body(request.headers):
            granted = yield ReadGranted()
        gate = UploadGate.of(
            ctx.profile.approval,
            route=target.route is not None,
            before=0 if head is None else ctx.ledger.before(head.destination) + head.size,
        )
        if target.route is None:
            self.waive_for_grant(target, gate, record)
        head_findings = bool(head and head.scan.findings)
        if not has_body(request.headers):
            if (yield from self._body_event()) is not None:  # h11's EndOfMessage, at once
                raise Refused(400, "bad-request", "a body where none was declared")
            body = Body(UploadInspector(), gate, head, ended=True)
            if head is not None and gate.must_ask(0, findings=head_findings, body=False):
                yield from self._hold(request, target, body, 0, record)
            return body
        body = Body(UploadInspector(granted), gate, head)
        if ctx.agent.they_are_waiting_for_100_continue:
            yield SendClient(
                [ctx.agent.send(h11.InformationalResponse(status_code=100, headers=[])) or b""],
                drain=False,
            )
        while body.inspector.size < ctx.settings.inspect_limit:
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
        self, request: h11.Request, target: Target, body: Body, size: int, record: ExchangeRecord
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
                f"{what} was not approved ({answer.by})" + findings_text(findings),
            )
        body.gate.approve()
        record.reason = f"upload approved ({answer.by})"
        grant = self.grant_for(target)(answer)
        if grant is not None:
            yield RememberGrant(grant)

    def stream(
        self, upstream: KeptUpstream, body: Body, target: Target, record: ExchangeRecord
    ) -> Steps:
        """The rest of the body, past what was held, sent on as it comes."""
        while (chunk := (yield from self._body_event())) is not None:
            new = body.inspector.feed(chunk)
            if body.gate.must_ask(body.inspector.size, findings=bool(new)):
                # Something turned up past what was approved: ask again before it leaves.
                yield from self._hold_more(target, body, new, record)
            if self._ctx.throttled:
                yield Throttle(len(chunk))
            yield from upstream.send(h11.Data(data=chunk))
        new = body.inspector.finish()
        if body.gate.must_ask(body.inspector.size, findings=bool(new)):
            yield from self._hold_more(target, body, new, record)
        body.ended = True

    def _hold_more(
        self, target: Target, body: Body, new: list[Finding], record: ExchangeRecord
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
                "the rest of the upload was not approved" + findings_text(new),
            )

    def _body_event(self) -> Steps:
        """The next chunk of the agent's body, or None at its end."""
        ctx = self._ctx
        while True:
            try:
                event = ctx.agent.next_event()
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is not h11.NEED_DATA:
                raise Refused(400, "bad-request", "the request body ended early")
            try:
                data = yield ReadClient(ctx.settings.body_timeout)
            except TimeoutError as e:
                raise Refused(408, "timeout", "the request body stalled") from e
            try:
                ctx.agent.receive_data(data)
            except h11.RemoteProtocolError as e:
                raise Refused(e.error_status_hint, "bad-request", str(e)) from e

    def _inspect_head(self, request: h11.Request, target: Target) -> Steps:
        """The data a request's head carries, inspected (→ `Head`)."""
        ledger = self._ctx.ledger
        destination, _ = destination_key(self._ctx.profile.network, target.host, target.port)
        granted: GrantedContent | None = yield ReadGranted()
        scan = HeadScan(granted, ledger.pieces)
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
                value = ledger.agents_cookies(destination, value)
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
            if ledger.new_value(destination, name, value):
                size += len(value) + (0 if name in KNOWN_HEADERS else len(name))
                values.append((name, value))
                text.append(name + b": " + value)
        if request.method not in STANDARD_METHODS:
            parts.append(("the method", bytes(request.method)))
            size += len(request.method)
        scan.parts(parts)
        return Head(destination, size, scan, b"\n".join(text), values)

    def sent(self, body: Body) -> None:
        """The request went out: its data counts toward the destination's threshold (or the
        count starts again if the user approved it)."""
        head = body.head
        if head is None:
            return
        ledger = self._ctx.ledger
        if body.gate.approved:
            ledger.approved(head.destination)
        else:
            ledger.add(head.destination, head.size + body.inspector.size)
        for name, value in head.values:
            ledger.remember_value(head.destination, name, value)

    def waive_for_grant(self, target: Target, gate: UploadGate, record: ExchangeRecord) -> None:
        """An upload grant for the destination waives the threshold (findings still ask)."""
        grant = self._ctx.granted(target, Access.UPLOAD)
        if grant is not None and grant.allowed:
            gate.approve()
            record.grants.append(grant.id)

    def grant_for(self, target: Target) -> Callable[[Answer], NetworkGrant | None]:
        """What an approval of an upload to `target` leaves behind (a refusal: nothing)."""

        def grant(answer: Answer) -> NetworkGrant | None:
            if not answer.allowed:
                return None  # a refused upload is asked about again next time
            made = self._ctx.grant_of(target, Access.UPLOAD, answer)
            record = self._ctx.record
            if made is not None and record is not None:
                record.grants.append(made.id)
            return made

        return grant

    def _no_stray_placeholder_in_body(self, held: list[bytes], target: Target) -> None:
        """A route's placeholder key in the part of a body held for inspection
        (`inspect_limit`), sent elsewhere than to its route, is refused."""
        stray = stray_placeholder_in(
            self._ctx.profile.network.routes, target.host, target.port, held
        )
        if stray is not None:
            raise Refused(
                403,
                "placeholder",
                f"the placeholder key of route {stray.name!r} "
                f"was in a body sent to {target.host}, which is not the route's "
                "host",
            )
