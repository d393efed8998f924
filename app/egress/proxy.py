"""The egress proxy's socket side: one asyncio unix-socket server per session.

This is the only egress module that touches sockets; what to do with a request is decided by
the pure modules (`requests.classify`, `policy.decide_destination`, `inspect`). h11 parses
both directions (client side as server, upstream side as client): nothing here parses HTTP
by hand.

Per request: classify → decide by name (refused names are never resolved) → ask the user
for `ask` hosts → resolve once → decide by address → hold the body for inspection and
approval if it must → connect to the checked address (no second lookup) → stream both ways.
Bodies stream in chunks; only an upload that is being inspected is held, at most
`inspect_limit` bytes. Each exchange ends in one event (`net.request`, `net.tunnel` or
`net.refused`) naming the rule that decided.

Robustness: a head must arrive whole within `head_timeout` (slowloris gets 408), at most
`max_head_bytes` (431), malformed HTTP gets h11's 400; every refusal closes its connection.
A failure is confined to its connection: the handler logs it and the server, and the other
sessions' servers, carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import h11

from app.consent import (
    Answer,
    ConsentBroker,
    ConsentRequest,
    RequestKind,
    Verdict,
    denied,
    new_request_id,
)
from app.egress.blocked import (
    MAX_LINE,
    BlockedAttempt,
    BlockedLimiter,
    Coalesced,
    Ready,
    Uncounted,
    parse_report,
)
from app.egress.inspect import Finding, GrantedContent, UploadInspector, mask_secrets, preview
from app.egress.keys import SecretSource
from app.egress.limits import ConnectionCounter, TokenBucket
from app.egress.policy import (
    Action,
    Decision,
    IPAddress,
    address_refusal,
    decide_destination,
    parse_host,
)
from app.egress.requests import (
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
from app.errors import EgressError
from app.events import EventBus, EventKind
from app.grants import Lifetime
from app.profiles import Profile

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PROXY_PORT = 3128
LINGER_SECONDS = 1.0
TUNNEL_HALF_OPEN_SECONDS = 10.0
PIPE_SIZE = 1024 * 1024  # what one splice moves at most (Linux's default pipe-max-size)
_ZEROS = memoryview(bytes(PIPE_SIZE))


class Resolver(Protocol):
    """Turns a name into addresses, once per request."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """The host's resolver (getaddrinfo in a thread, as asyncio does it)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        import ipaddress

        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        found: list[IPAddress] = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            if address not in found:
                found.append(address)
        return found


class GrantedSource(Protocol):
    """The current fingerprints of the session's granted files."""

    async def current(self) -> GrantedContent: ...


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
    own_authorities: frozenset[str] = frozenset(
        {f"127.0.0.1:{PROXY_PORT}", f"localhost:{PROXY_PORT}"}
    )


class _Refused(Exception):
    """Ends an exchange with a refusal response."""

    def __init__(self, status: int, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.rule, self.reason = status, rule, reason


class _Gone(Exception):
    """The client went away or stalled: end without a response."""


@dataclass(slots=True)
class _Record:
    """What the log keeps of one exchange."""

    method: str = ""
    host: str = ""
    port: int = 0
    path: str = ""
    status: int = 0
    up: int = 0
    down: int = 0
    decision: str = "deny"
    rule: str = ""
    reason: str = ""
    address: str = ""
    route: str = ""
    held: bool = False
    findings: list[dict[str, object]] = field(default_factory=list)
    sha256: str = ""
    started: float = field(default_factory=time.monotonic)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method, "host": self.host, "port": self.port,
            "path": mask_secrets(redact_path(self.path)), "status": self.status,
            "bytes_up": self.up, "bytes_down": self.down,
            "duration": round(time.monotonic() - self.started, 6),
            "decision": self.decision, "rule": self.rule, "reason": self.reason,
        }
        for key in ("address", "route", "sha256"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.held:
            out["held"] = True
            out["findings"] = self.findings
        return out


@dataclass(slots=True)
class _Upstream:
    key: tuple[str, int, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection


@dataclass(slots=True)
class _Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection
    upstream: _Upstream | None = None
    record: _Record | None = None  # the exchange under way, if any
    cut: bool = False  # ended by `SessionProxy.cut`


class SessionProxy:
    """The proxy of one session, serving the agent's connections on the port the bridge
    handed over."""

    def __init__(
        self,
        session: str,
        profile: Profile,
        bus: EventBus,
        *,
        secrets: SecretSource,
        broker: ConsentBroker | None = None,
        resolver: Resolver | None = None,
        granted: GrantedSource | None = None,
        tls: ssl.SSLContext | None = None,
        settings: ProxySettings | None = None,
        blocked: Callable[[], bool] | None = None,
    ) -> None:
        self.session = session
        self.profile = profile
        self._blocked = blocked  # the user's "Block all network" switch
        self._bus = bus
        self._secrets = secrets
        self._broker = broker
        self._resolver = resolver or SystemResolver()
        self._granted = granted
        self._tls = tls
        self.settings = settings or ProxySettings()
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[Any], _Client] = {}
        self._connections = ConnectionCounter(profile.network.max_connections)
        rate = profile.network.bandwidth
        self._bucket = TokenBucket.per_second(rate) if rate else None
        self._answers: dict[tuple[str, int], tuple[bool, float | None]] = {}

    async def start(self, listener: socket.socket) -> None:
        """Serves the agent's connections on `listener`, the listening socket the sidecar
        handed over (bound in the agent's namespace; app/egress/listener.py). It is ours
        from now on."""
        self._server = await asyncio.start_server(self._accept, sock=listener,
                                                  limit=self.settings.chunk * 4)

    def cut(self) -> None:
        """Ends every connection of the agent's now, tunnels and transfers under way included
        (the user blocked all network); each exchange cut is logged as refused."""
        for task, client in list(self._clients.items()):
            client.cut = True
            task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # one client connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        client = _Client(reader, writer, h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.settings.max_head_bytes))
        self._clients[task] = client
        try:
            if len(self._clients) > self.settings.max_clients:
                raise _Refused(503, "limit", "too many connections from the agent")
            await self._serve(client)
        except _Refused as e:
            await self._refuse(client, _Record(), e)
        except _Gone:
            pass
        except asyncio.CancelledError:
            if not client.cut:
                raise
            task.uncancel()  # ours: the connection ends here, cleanly
            self._log_cut(client.record)
        except (ConnectionError, OSError) as e:
            log.debug("session %s: client connection ended: %s", self.session, e)
        except Exception:
            log.exception("session %s: proxy connection failed", self.session)
        finally:
            self._clients.pop(task, None)
            await self._drop_upstream(client)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(self, client: _Client) -> None:
        while True:
            request = await self._read_head(client)
            if request is None:
                return
            record = client.record = _Record(method=request.method.decode("ascii", "replace"))
            try:
                keep = await self._exchange(client, request, record)
            except _Refused as e:
                await self._refuse(client, record, e)
                return
            client.record = None
            if not keep:
                return
            client.conn.start_next_cycle()

    async def _read_head(self, client: _Client) -> h11.Request | None:
        deadline: float | None = None
        while True:
            try:
                event = client.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise _Refused(e.error_status_hint, "bad-request", str(e)) from e
            if isinstance(event, h11.Request):
                # h11 bounds only a head still arriving; one that came in a single read
                # is measured here.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self.settings.max_head_bytes:
                    raise _Refused(431, "bad-request", "the request head is too large")
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise _Refused(400, "bad-request", f"unexpected {type(event).__name__}")
            timeout = (self.settings.idle_timeout if deadline is None
                       else deadline - time.monotonic())
            try:
                data = await _within(client.reader.read(self.settings.chunk),
                                              max(timeout, 0))
            except TimeoutError as e:
                if deadline is None:
                    raise _Gone from e  # an idle kept-alive connection: just close it
                raise _Refused(408, "timeout", "the request head did not arrive in time") from e
            if deadline is None:
                deadline = time.monotonic() + self.settings.head_timeout
            try:
                client.conn.receive_data(data)
            except h11.RemoteProtocolError as e:
                raise _Refused(e.error_status_hint, "bad-request", str(e)) from e

    async def _refuse(self, client: _Client, record: _Record, refusal: _Refused) -> None:
        record.status, record.rule, record.reason = refusal.status, refusal.rule, refusal.reason
        record.decision = "deny"
        self._emit(EventKind.NET_REFUSED, record)
        try:
            client.writer.write(refusal_response(refusal.status, refusal.rule, refusal.reason))
            await client.writer.drain()
            client.writer.write_eof()
            # Closing with unread input makes the kernel send RST, which can destroy the
            # refusal before the client reads it: read (and drop) what is in flight first.
            deadline = time.monotonic() + LINGER_SECONDS
            while time.monotonic() < deadline:
                left = deadline - time.monotonic()
                if not await _within(client.reader.read(65536), left):
                    break
        except (ConnectionError, OSError, RuntimeError, TimeoutError):
            pass

    def _log_cut(self, record: _Record | None) -> None:
        if record is None:
            return  # between exchanges: nothing was under way
        record.decision, record.rule = "deny", "blocked-all"
        record.reason = "cut: the user blocked all network access of agents"
        self._emit(EventKind.NET_REFUSED, record)

    def _emit(self, kind: EventKind, record: _Record) -> None:
        subject = f"{record.host}:{record.port}" if record.host else "-"
        self._bus.emit(kind, self.session, subject, **record.details())

    # deciding

    async def _exchange(self, client: _Client, request: h11.Request, record: _Record) -> bool:
        target = classify(request.method, request.target, request.headers,
                          self.profile.network.routes, self.settings.own_authorities)
        if isinstance(target, Refusal):
            raise _Refused(target.status, target.rule, target.reason)
        record.host, record.port, record.path = target.host, target.port, target.path
        if target.route is not None:
            record.route = target.route.name
        credential = await self._credential(target)
        addresses = await self._admit(target, record)
        if target.kind is Kind.TUNNEL:
            await self._tunnel(client, target, addresses, record)
            return False
        return await self._forward(client, request, target, addresses, credential, record)

    async def _admit(self, target: Target, record: _Record) -> list[IPAddress]:
        if self._blocked is not None and self._blocked():
            record.rule, record.reason = "blocked-all", "all network access of agents is blocked"
            raise _Refused(403, record.rule, "the user blocked all network access of agents")
        network = self.profile.network
        if target.route is not None:
            decision = Decision(Action.ALLOW, f"route:{target.route.name}", "credential route")
        else:
            decision = decide_destination(network, target.host, target.port, target.method)
        record.rule, record.reason = decision.rule, decision.reason
        if decision.action is Action.DENY:
            raise _Refused(403, decision.rule, decision.reason)
        if decision.action is Action.ASK:
            answer = await self._ask_host(target, decision)
            if not answer.allowed:
                raise _Refused(403, decision.rule,
                               f"{target.host}:{target.port} was not approved ({answer.by})")
            record.reason = f"approved ({answer.by})"
        host = parse_host(target.host)
        if host.address is not None:
            addresses: list[IPAddress] = [host.address]
        else:
            try:
                addresses = await _within(
                    self._resolver.resolve(host.name, target.port), self.settings.connect_timeout
                )
            except (OSError, TimeoutError) as e:
                raise _Refused(502, "unresolved", f"cannot resolve {host.name}") from e
        refused = address_refusal(network, host, addresses)
        if refused is not None:
            raise _Refused(403, refused.rule, refused.reason)
        record.decision = "allow"
        return addresses

    async def _ask_host(self, target: Target, decision: Decision) -> Answer:
        key = (target.host.lower(), target.port)
        remembered = self._answers.get(key)
        if remembered is not None and (remembered[1] is None or remembered[1] > time.time()):
            return Answer(Verdict.ALLOW if remembered[0] else Verdict.DENY, by="remembered")
        answer = await self._ask(RequestKind.NETWORK, f"{target.host}:{target.port}", {
            "host": target.host, "port": target.port, "method": target.method,
            "rule": decision.rule,
        })
        if answer.lifetime is not Lifetime.ONCE:
            self._answers[key] = (answer.allowed, answer.until)
        return answer

    async def _ask(self, kind: RequestKind, subject: str, details: dict[str, Any]) -> Answer:
        if self._broker is None:
            return denied("no front end")
        request = ConsentRequest(
            id=new_request_id(), session=self.session, profile=self.profile.name, kind=kind,
            subject=subject, details=details, timeout=self.profile.approval.timeout,
        )
        return await self._broker.ask(request)

    # tunnels

    async def _tunnel(self, client: _Client, target: Target, addresses: Sequence[IPAddress],
                      record: _Record) -> None:
        reader, writer, address = await self._connect(addresses, target.port, None)
        record.address = address
        try:
            response = h11.Response(status_code=200, headers=[],
                                    reason=b"Connection established")
            client.writer.write(client.conn.send(response) or b"")
            record.status = 200
            leftover, _ = client.conn.trailing_data
            if self._spliceable(client.writer, writer):
                await _both(self._splice_up(client, writer, leftover, target, record),
                            self._splice_down(reader, writer, client.writer, record))
            else:
                await _both(self._pump_up(client.reader, writer, leftover, target, record),
                            self._pump_down(reader, client.writer, record))
        except _Refused as e:
            record.status, record.rule, record.reason = e.status, e.rule, e.reason
            record.decision = "deny"
            self._emit(EventKind.NET_REFUSED, record)
            return
        except (ConnectionError, OSError) as e:
            log.debug("session %s: tunnel to %s ended: %s", self.session, target.host, e)
        finally:
            writer.close()
            self._connections.release()
        self._emit(EventKind.NET_TUNNEL, record)

    async def _pump_up(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       first: bytes, target: Target, record: _Record) -> None:
        admit = self._tunnel_upload(target, record)
        data = first
        while True:
            if not data:
                data = await source.read(self.settings.chunk)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                    return
            await admit(len(data))
            sink.write(data)
            await sink.drain()
            data = b""

    def _tunnel_upload(self, target: Target, record: _Record) -> Callable[[int], Awaitable[None]]:
        """What runs before `amount` more bytes go up a tunnel: past the upload threshold the
        tunnel pauses for the user's approval (the bytes wait), then the bandwidth limit."""
        approval = self.profile.approval
        allowance: float = {"never": float("inf"), "always": 0}.get(
            approval.uploads, approval.upload_threshold)

        async def admit(amount: int) -> None:
            nonlocal allowance
            if record.up + amount > allowance:
                answer = await self._ask(RequestKind.UPLOAD, f"{target.host}:{target.port}", {
                    "host": target.host, "port": target.port, "method": "CONNECT",
                    "size": record.up + amount, "tunnel": True,
                    "threshold": approval.upload_threshold,
                })
                record.held = True
                if not answer.allowed:
                    raise _Refused(403, "upload-refused",
                                   f"upload of {record.up + amount} bytes through the tunnel "
                                   f"was not approved ({answer.by})")
                allowance = float("inf")
            await self._throttle(amount)
            record.up += amount

        return admit

    async def _splice_up(self, client: _Client, sink: asyncio.StreamWriter, first: bytes,
                         target: Target, record: _Record) -> None:
        await self._splice(client.reader, client.writer, sink, None, None,
                           self._tunnel_upload(target, record), first)
        with contextlib.suppress(OSError):
            sink.write_eof()

    async def _splice_down(self, source: asyncio.StreamReader, source_writer: asyncio.StreamWriter,
                           sink: asyncio.StreamWriter, record: _Record) -> None:
        async def admit(amount: int) -> None:
            await self._throttle(amount)
            record.down += amount

        await self._splice(source, source_writer, sink, None, None, admit)
        with contextlib.suppress(OSError):
            sink.write_eof()

    async def _pump_down(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                         record: _Record) -> None:
        while data := await source.read(self.settings.chunk):
            await self._throttle(len(data))
            sink.write(data)
            record.down += len(data)
            await sink.drain()
        with contextlib.suppress(OSError):
            sink.write_eof()

    # plain HTTP and routes

    async def _forward(self, client: _Client, request: h11.Request, target: Target,
                       addresses: Sequence[IPAddress], credential: _Credential | None,
                       record: _Record) -> bool:
        body = await self._take_body(client, request, target, record)
        default_port = 443 if target.tls else 80
        headers = upstream_headers(request.headers, parse_host(target.host).name, target.port,
                                   default_port, credential.header if credential else None)
        if header(request.headers, b"transfer-encoding"):
            headers.append((b"transfer-encoding", b"chunked"))
        upstream = await self._upstream(client, addresses, target)
        record.address = upstream.key[0]
        reusable = False
        try:
            await self._send(upstream, h11.Request(method=request.method, target=target.path,
                                                   headers=headers))
            for chunk in body.held:
                await self._send(upstream, h11.Data(data=chunk))
            if not body.ended:
                await self._stream_body(client, upstream, body, target, record)
            await self._send(upstream, h11.EndOfMessage())
            record.up = body.inspector.size
            scrub = _Scrubber(credential.secret.encode("utf-8") if credential else b"")
            await self._relay_response(client, upstream, request, scrub, record)
            reusable = upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE
        except h11.LocalProtocolError as e:
            # What could not be sent as valid HTTP: h11's text quotes it, and on a route it
            # holds the credential.
            raise _Refused(502, "upstream", "the request could not be sent on as valid "
                           "HTTP") from e
        except h11.ProtocolError as e:
            # The upstream's bytes, quoted: on a route they may echo the credential.
            detail = "" if credential else f": {e}"
            raise _Refused(502, "upstream", f"the upstream sent bad HTTP{detail}") from e
        except (ConnectionError, OSError) as e:
            if record.status:
                raise _Gone from e  # the response had started: all we can do is close
            raise _Refused(502, "upstream", f"the upstream connection failed: {e}") from e
        finally:
            if reusable:
                upstream.conn.start_next_cycle()
            else:
                await self._drop_upstream(client)
        self._emit(EventKind.NET_REQUEST, record)
        return client.conn.our_state is h11.DONE and client.conn.their_state is h11.DONE

    async def _credential(self, target: Target) -> _Credential | None:
        if target.route is None:
            return None
        name = target.route.secret
        try:
            secret = await asyncio.to_thread(self._secrets.get, name)
        except EgressError as e:
            log.warning("session %s: %s", self.session, e)
            raise _Refused(502, f"route:{target.route.name}",
                           "the route's credential cannot be read from the keyring") from e
        if secret is None:
            raise _Refused(502, f"route:{target.route.name}",
                           f"no credential stored for this route: run `airlock secret set {name}`")
        try:
            return _Credential(credential_header(target.route, secret), secret)
        except ValueError as e:
            raise _Refused(502, f"route:{target.route.name}", str(e)) from e

    async def _take_body(self, client: _Client, request: h11.Request, target: Target,
                         record: _Record) -> _Body:
        """Reads the body up to the inspection limit, inspects it, and holds it for the
        user's approval when the profile or a finding says so."""
        if not has_body(request.headers):
            if await self._body_event(client) is not None:  # h11's EndOfMessage, at once
                raise _Refused(400, "bad-request", "a body where none was declared")
            return _Body(UploadInspector(), ended=True)
        granted = None
        if self._granted is not None and target.route is None:
            # A route is the agent's trusted service: sending it granted files is its job.
            granted = await self._granted.current()
        body = _Body(UploadInspector(granted))
        if client.conn.they_are_waiting_for_100_continue:
            client.writer.write(client.conn.send(h11.InformationalResponse(
                status_code=100, headers=[])) or b"")
        while body.inspector.size < self.settings.inspect_limit:
            chunk = await self._body_event(client)
            if chunk is None:
                body.ended = True
                body.inspector.finish()
                break
            body.inspector.feed(chunk)
            body.held.append(chunk)
        declared = content_length(request.headers)
        size = declared if declared is not None else body.inspector.size + (not body.ended)
        approval = self.profile.approval
        hold = bool(body.inspector.findings)
        if target.route is None:
            hold = hold or approval.uploads == "always" or (
                approval.uploads == "ask" and size > approval.upload_threshold)
        if hold:
            await self._hold(request, target, body, size, record)
        return body

    async def _hold(self, request: h11.Request, target: Target, body: _Body, size: int,
                    record: _Record) -> None:
        inspector = body.inspector
        record.held = True
        record.findings = [f.to_json() for f in inspector.findings]
        record.sha256 = inspector.sha256 if body.ended else ""
        mime = b",".join(header(request.headers, b"content-type")).decode("latin-1")
        answer = await self._ask(RequestKind.UPLOAD, f"{target.host}:{target.port}", {
            "host": target.host, "port": target.port, "method": target.method,
            "path": redact_path(target.path), "size": size, "complete": body.ended,
            "inspected": inspector.size, "mime": mime[:200],
            "sha256": inspector.sha256, "preview": preview(inspector.head),
            "findings": record.findings,
        })
        if not answer.allowed:
            raise _Refused(403, "upload-refused",
                           f"the upload of {size} bytes was not approved ({answer.by})"
                           + _findings_text(inspector.findings))
        record.reason = f"upload approved ({answer.by})"

    async def _stream_body(self, client: _Client, upstream: _Upstream, body: _Body,
                           target: Target, record: _Record) -> None:
        while (chunk := await self._body_event(client)) is not None:
            new = body.inspector.feed(chunk)
            if new:
                # Something turned up past what was approved: ask again before it leaves.
                await self._hold_more(target, body, new, record)
            await self._throttle(len(chunk))
            await self._send(upstream, h11.Data(data=chunk))
        new = body.inspector.finish()
        if new:
            await self._hold_more(target, body, new, record)
        body.ended = True

    async def _hold_more(self, target: Target, body: _Body, new: list[Finding],
                         record: _Record) -> None:
        record.held = True
        record.findings += [f.to_json() for f in new]
        answer = await self._ask(RequestKind.UPLOAD, f"{target.host}:{target.port}", {
            "host": target.host, "port": target.port, "method": target.method,
            "path": redact_path(target.path), "size": body.inspector.size, "complete": False,
            "findings": [f.to_json() for f in new],
        })
        if not answer.allowed:
            # The upstream has part of the body; dropping the connection leaves it incomplete.
            raise _Refused(403, "upload-refused",
                           "the rest of the upload was not approved" + _findings_text(new))

    async def _body_event(self, client: _Client) -> bytes | None:
        """The next chunk of the client's body, or None at its end."""
        while True:
            try:
                event = client.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise _Refused(e.error_status_hint, "bad-request", str(e)) from e
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is not h11.NEED_DATA:
                raise _Refused(400, "bad-request", "the request body ended early")
            try:
                data = await _within(client.reader.read(self.settings.chunk),
                                              self.settings.body_timeout)
            except TimeoutError as e:
                raise _Refused(408, "timeout", "the request body stalled") from e
            try:
                client.conn.receive_data(data)
            except h11.RemoteProtocolError as e:
                raise _Refused(e.error_status_hint, "bad-request", str(e)) from e

    async def _relay_response(self, client: _Client, upstream: _Upstream,
                              request: h11.Request, scrub: _Scrubber, record: _Record) -> None:
        while True:
            event = await self._upstream_event(upstream)
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue was ours to give; other 1xx are not relayed
            if not isinstance(event, h11.Response):
                raise _Refused(502, "upstream", "the upstream closed without a response")
            break
        if scrub.active and header(event.headers, b"content-encoding") not in ([], [b"identity"]):
            # Compressed, the credential an upstream echoes cannot be found to be masked.
            raise _Refused(502, "upstream", "the route's upstream answered compressed, which "
                           "Airlock cannot check for the credential")
        headers = client_headers([(k, scrub.whole(v)) for k, v in event.headers])
        record.status = event.status_code
        client.writer.writelines(client.conn.send_with_data_passthrough(h11.Response(
            status_code=event.status_code, headers=headers,
            reason=scrub.whole(bytes(event.reason)))) or [])
        length = None
        if not scrub.active and self._spliceable(client.writer, upstream.writer):
            length = _spliceable_length(request, event, headers)
        sent = 0
        while True:
            event = upstream.conn.next_event()
            if event is h11.NEED_DATA:
                if length is not None and length - sent >= self.settings.splice_min:
                    # What h11 held has gone out; the rest of the body bypasses it.
                    await self._splice_body(client, upstream, length - sent, record)
                    client.writer.write(client.conn.send(h11.EndOfMessage()) or b"")
                    await client.writer.drain()
                    return
                event = await self._upstream_event(upstream)
            if isinstance(event, h11.Data):
                sent += len(event.data)
                data = scrub.feed(bytes(event.data)) if scrub.active else event.data
                record.down += len(event.data)
                await self._throttle(len(event.data))
            elif isinstance(event, h11.EndOfMessage):
                data = scrub.flush()
            else:
                raise _Gone  # the upstream vanished mid-body; the client sees a cut response
            if data:
                client.writer.writelines(
                    client.conn.send_with_data_passthrough(h11.Data(data=data)) or [])
            if isinstance(event, h11.EndOfMessage):
                client.writer.write(client.conn.send(h11.EndOfMessage()) or b"")
                await client.writer.drain()
                return
            await client.writer.drain()

    async def _upstream_event(self, upstream: _Upstream) -> Any:
        while True:
            event = upstream.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await _within(upstream.reader.read(self.settings.chunk),
                                              self.settings.body_timeout)
            except TimeoutError as e:
                raise _Refused(504, "upstream", "the upstream did not answer in time") from e
            upstream.conn.receive_data(data)

    async def _splice_body(self, client: _Client, upstream: _Upstream, length: int,
                           record: _Record) -> None:
        """The last `length` bytes of a response body, spliced. The upstream connection is
        left mid-message for h11, so it is not reused; the agent's side is told the bytes
        went out (`_account`), so its keep-alive goes on."""

        async def admit(amount: int) -> None:
            await self._throttle(amount)
            record.down += amount
            _account(client.conn, amount)

        moved = await self._splice(upstream.reader, upstream.writer, client.writer, length,
                                   self.settings.body_timeout, admit)
        if moved < length:
            raise _Gone  # the upstream vanished mid-body; the client sees a cut response

    def _spliceable(self, *writers: asyncio.StreamWriter) -> bool:
        return self.settings.splice and hasattr(os, "splice") and all(
            w.get_extra_info("ssl_object") is None and w.get_extra_info("socket") is not None
            and isinstance(w.transport, asyncio.ReadTransport) for w in writers)

    async def _splice(self, source: asyncio.StreamReader, source_writer: asyncio.StreamWriter,
                      sink: asyncio.StreamWriter, length: int | None, timeout: float | None,
                      admit: Callable[[int], Awaitable[None]], first: bytes = b"") -> int:
        """Moves `length` bytes (None: up to the source's end) from the source's socket to
        the sink's, `first` and what the source's stream buffered before them. `admit(n)`
        runs before n bytes go out (bandwidth, counters, approval). Returns how many moved:
        fewer than `length` means the source ended early. A silence of `timeout` seconds
        from the source ends the relay the same way.

        Socket → pipe → socket with splice(2): the kernel moves the pages and Python only
        counts, where a copy through Python ran at a quarter of loopback speed. The sockets
        belong to asyncio transports, which refuse a second reader or writer on their fds:
        the source's transport is paused, the sink's write buffer emptied, and the relay
        waits on duplicates of the two descriptors."""
        transport = source_writer.transport
        assert isinstance(transport, asyncio.ReadTransport)  # _spliceable checked
        transport.pause_reading()
        data = first + _take_buffered(source)
        if length is not None:
            data = data[:length]  # bytes past a declared length are not the agent's to get
        moved = 0
        if data:
            await admit(len(data))
            sink.write(data)
            moved = len(data)
        await _flushed(sink)
        sink_socket = sink.get_extra_info("socket")
        if sink_socket.family == socket.AF_UNIX:
            # The default unix socket buffer (~200 KiB) would cut each splice in five. (TCP
            # sizes its own buffers; a fixed size would switch that off.)
            with contextlib.suppress(OSError):
                sink_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * PIPE_SIZE)
        pipe = _SplicePipe(source_writer.get_extra_info("socket").fileno(),
                           sink.get_extra_info("socket").fileno())
        try:
            while length is None or moved < length:
                want = PIPE_SIZE if length is None else min(PIPE_SIZE, length - moved)
                try:
                    amount = await pipe.fill(want, timeout)
                except TimeoutError:
                    break
                if not amount:
                    break
                await admit(amount)
                await pipe.empty(amount)
                moved += amount
        finally:
            pipe.close()
        return moved

    async def _send(self, upstream: _Upstream, event: Any) -> None:
        data = upstream.conn.send_with_data_passthrough(event)
        if data:
            upstream.writer.writelines(data)
            await upstream.writer.drain()

    # upstream connections

    async def _upstream(self, client: _Client, addresses: Sequence[IPAddress],
                        target: Target) -> _Upstream:
        tls_name = parse_host(target.host).name if target.tls else ""
        cached = client.upstream
        if cached is not None:
            fresh = (cached.key[0] in {str(a) for a in addresses} and cached.key[1:] ==
                     (target.port, tls_name) and cached.conn.our_state is h11.IDLE
                     and not cached.reader.at_eof())
            if fresh:
                return cached
            await self._drop_upstream(client)
        reader, writer, address = await self._connect(addresses, target.port,
                                                      tls_name or None)
        client.upstream = _Upstream((address, target.port, tls_name), reader, writer,
                                    h11.Connection(h11.CLIENT))
        return client.upstream

    async def _drop_upstream(self, client: _Client) -> None:
        upstream, client.upstream = client.upstream, None
        if upstream is None:
            return
        upstream.writer.close()
        self._connections.release()

    async def _connect(self, addresses: Sequence[IPAddress], port: int, tls_name: str | None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        if not self._connections.acquire():
            raise _Refused(429, "limit", f"the session has {self._connections.limit} "
                           "connections open already")
        context = None
        if tls_name is not None:
            context = self._tls or ssl.create_default_context()
        error: Exception | None = None
        for address in addresses:
            try:
                reader, writer = await _within(
                    asyncio.open_connection(str(address), port, ssl=context,
                                            server_hostname=tls_name,
                                            limit=self.settings.chunk * 4),
                    self.settings.connect_timeout,
                )
                return reader, writer, str(address)
            except (OSError, TimeoutError, ssl.SSLError) as e:
                error = e
        self._connections.release()
        raise _Refused(502, "upstream", f"cannot connect to port {port}: {error}")

    async def _throttle(self, amount: int) -> None:
        if self._bucket is not None:
            wait = self._bucket.delay(amount, time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)


class BlockedLog:
    """The supervisor's end of the sidecar witness's reports (`netlog.sock`): one connection,
    one JSON line per attempt to leave around the proxy, each a `net.blocked` event — through
    a limiter, so that an agent flooding packets floods nothing here. `ready` is set once the
    witness owns the namespace's routes and has dropped its privileges."""

    def __init__(self, session: str, bus: EventBus, limiter: BlockedLimiter | None = None
                 ) -> None:
        self.session = session
        self._bus = bus
        self._limiter = limiter or BlockedLimiter()
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()  # the witness hung up
        self.malformed = 0
        self._server: asyncio.Server | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._closing = False

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(path),
                                                       limit=MAX_LINE + 1)
        os.chmod(path, 0o666)  # the witness runs as the agent's uid; the directory guards it

    def expect_hangup(self) -> None:
        """The session is ending: the witness hanging up is no longer news."""
        self._closing = True

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._emit_coalesced(self._limiter.flush())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._reader is not None:
            writer.close()  # one witness per session: a second connection is not ours
            return
        self._reader = asyncio.current_task()
        window = self._limiter.window
        try:
            while True:
                try:
                    # readline is cancel-safe: a line cut by the timeout stays buffered.
                    line = await _within(reader.readline(), window)
                except TimeoutError:
                    self._emit_coalesced(self._limiter.due(time.monotonic()))
                    continue
                except ValueError:  # longer than MAX_LINE: asyncio dropped it
                    self._malformed("an overlong line")
                    continue
                if not line:
                    break
                self._report(line)
        except (ConnectionError, OSError) as e:
            log.debug("session %s: witness connection failed: %s", self.session, e)
        finally:
            writer.close()
            self.ended.set()
            if not self._closing:
                log.warning("session %s: the network witness hung up; direct attempts to "
                            "leave are no longer reported", self.session)

    def _report(self, line: bytes) -> None:
        now = time.monotonic()
        try:
            report = parse_report(line)
        except ValueError as e:
            self._malformed(str(e))
            return
        if isinstance(report, Ready):
            self.ready.set()
        elif isinstance(report, Uncounted):
            self._limiter.hold(report.count, now, destinations=report.destinations)
        elif self._limiter.admit(report, now):
            self._emit(report)
        self._emit_coalesced(self._limiter.due(now))

    def _emit(self, attempt: BlockedAttempt) -> None:
        self._bus.emit(EventKind.NET_BLOCKED, self.session, attempt.subject, **attempt.details())

    def _emit_coalesced(self, held: Coalesced | None) -> None:
        if held is None or not held.count:
            return
        self._bus.emit(EventKind.NET_BLOCKED, self.session, "*", protocol="*",
                       count=held.count, destinations=held.destinations, coalesced=True,
                       decision="deny", rule="no-route",
                       reason=f"{held.count} more direct attempts to leave, counted together")

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            log.warning("session %s: the network witness sent %s", self.session, what)


@dataclass(frozen=True, slots=True)
class _Credential:
    header: tuple[str, str]
    secret: str = field(repr=False)


@dataclass(slots=True)
class _Body:
    inspector: UploadInspector
    held: list[bytes] = field(default_factory=list)
    ended: bool = False


class _Scrubber:
    """Replaces a route's secret in the upstream's answer with asterisks of the same length
    (so Content-Length stays right), keeping `len(secret) - 1` bytes back between chunks so
    a secret split across two chunks is caught: an upstream that echoes the credential
    (a debug endpoint, an error page) must not hand it to the agent."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.active = len(secret) >= 4
        self._carry = b""

    def whole(self, value: bytes) -> bytes:
        return value.replace(self.secret, b"*" * len(self.secret)) if self.active else value

    def feed(self, data: bytes) -> bytes:
        data = self.whole(self._carry + data)
        cut = max(0, len(data) - (len(self.secret) - 1))
        self._carry = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        out, self._carry = self.whole(self._carry), b""
        return out


class _SplicePipe:
    """A pipe between two sockets for splice(2), waiting on duplicates of their descriptors
    (see `SessionProxy._splice`). Non-blocking throughout: the loop never waits in a call."""

    def __init__(self, source: int, sink: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds: list[int] = []
        try:
            self._source = self._keep(os.dup(source))
            self._sink = self._keep(os.dup(sink))
            self._out, self._in = (self._keep(fd) for fd in os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
            with contextlib.suppress(OSError):  # a smaller pipe only means more calls
                fcntl.fcntl(self._in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    async def fill(self, most: int, timeout: float | None) -> int:
        """Moves up to `most` bytes from the source into the (empty) pipe; 0 at the end."""
        while True:
            try:
                return os.splice(self._source, self._in, most,
                                 flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                await self._ready(self._source, False, timeout)

    async def empty(self, amount: int) -> None:
        """Moves `amount` bytes from the pipe to the sink."""
        while amount:
            try:
                amount -= os.splice(self._out, self._sink, amount,
                                    flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                await self._ready(self._sink, True, None)

    async def _ready(self, fd: int, write: bool, timeout: float | None) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if write:
            self._loop.add_writer(fd, wake)
        else:
            self._loop.add_reader(fd, wake)
        try:
            await _within(ready, timeout)
        finally:
            if write:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _take_buffered(reader: asyncio.StreamReader) -> bytes:
    """What the stream holds already, taken without waiting for more: asyncio has no public
    call for that, so this reads its buffer (a bytearray in every CPython 3.x)."""
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009
    data = bytes(buffer)
    buffer.clear()
    return data


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Until the transport's write buffer is empty (`drain` only waits for it to be low)."""
    transport = writer.transport
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def _account(conn: h11.Connection, amount: int) -> None:
    """Tells h11 that `amount` body bytes went to its peer by another way (splice): its
    Content-Length writer only counts them, and what it returns is dropped unwritten."""
    while amount:
        step = min(amount, len(_ZEROS))
        conn.send_with_data_passthrough(h11.Data(data=cast(bytes, _ZEROS[:step])))
        amount -= step


def _spliceable_length(request: h11.Request, response: h11.Response,
                       sent_headers: list[tuple[bytes, bytes]]) -> int | None:
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


async def _within(awaitable: Awaitable[_T], seconds: float | None) -> _T:
    """`asyncio.wait_for`, minus its Python 3.11 flaw: a cancellation that arrives as the
    awaited thing completes is swallowed there, and `SessionProxy.cut` would not cut."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def _both(up: Coroutine[Any, Any, None], down: Coroutine[Any, Any, None]) -> None:
    """Runs a tunnel's two directions. The first failure ends both; when the upstream side
    ends, the agent's side gets `TUNNEL_HALF_OPEN_SECONDS` to finish (a half-open tunnel
    must not be held forever)."""
    up_task, down_task = asyncio.ensure_future(up), asyncio.ensure_future(down)
    try:
        done, _ = await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        if down_task.done() and not up_task.done():
            await asyncio.wait({up_task}, timeout=TUNNEL_HALF_OPEN_SECONDS)
        elif up_task.done():
            await down_task
        if up_task.done():
            up_task.result()
    finally:
        for task in (up_task, down_task):
            task.cancel()
        await asyncio.gather(up_task, down_task, return_exceptions=True)
