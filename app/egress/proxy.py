"""The egress proxy's socket side: one asyncio server per session, driving the sans-I/O core.

`exchange.ClientConnection` decides everything about an agent's connection and yields
commands; this module is the thin driver that performs them on sockets (read, write, connect,
resolve, ask, splice, relay a tunnel, throttle, log) and sends the results back. It is the
only egress module besides `splice` and `witness` that touches sockets.

A failure is confined to its connection: the handler logs it and the server, and the other
sessions' servers, carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.consent import Answer, ConsentBroker, ConsentRequest, denied, new_request_id
from app.egress.aio import Turns, take_buffered, within
from app.egress.ca import SessionCA
from app.egress.exchange import ClientConnection
from app.egress.grants import NetworkGrants
from app.egress.inspect import GrantedContent
from app.egress.interception import Handshake, StartTLS, TLSRefused, handshake_refusal
from app.egress.keys import SecretSource
from app.egress.limits import ConnectionCounter, TokenBucket
from app.egress.policy import IPAddress
from app.egress.records import ExchangeRecord
from app.egress.splice import splice, spliceable
from app.egress.steps import (
    PROXY_PORT,
    Ask,
    CloseTunnel,
    Command,
    Connect,
    Connected,
    DropUpstream,
    Gone,
    Log,
    OpenTunnel,
    ProxySettings,
    ReadClient,
    ReadCredential,
    ReadGranted,
    ReadUpstream,
    RefuseClient,
    Refused,
    RelayTunnel,
    RelayWebSocket,
    RememberGrant,
    Resolve,
    SendClient,
    SendUpstream,
    SpliceBody,
    Throttle,
    UpstreamAlive,
)
from app.egress.tunnels import TunnelUploads
from app.egress.uploads import UploadLedger
from app.egress.witness import BlockedLog
from app.errors import EgressError
from app.events import EventBus, EventKind
from app.grants import NetworkGrant
from app.profiles import Profile

__all__ = [
    "PROXY_PORT",
    "BlockedLog",
    "GrantedSource",
    "ProxySettings",
    "Resolver",
    "SessionProxy",
    "SystemResolver",
]

log = logging.getLogger(__name__)

LINGER_SECONDS = 1.0
TUNNEL_HALF_OPEN_SECONDS = 10.0
TLS_SHUTDOWN_SECONDS = 5.0  # an agent that never answers our close_notify
# What a command may fail with that the core handles (or lets end the connection); anything
# else is a defect of the driver and ends the connection with a logged traceback.
_FAILURES = (Refused, Gone, TimeoutError, OSError, EgressError, TLSRefused)


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


@dataclass(slots=True)
class _Stream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass(slots=True)
class _Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    core: ClientConnection
    upstream: _Stream | None = None  # the kept plain-HTTP upstream connection
    tunnel: _Stream | None = None
    cut: str = ""  # why it was ended by `SessionProxy.cut` or a revoked grant
    # The TLS layer took the agent's socket and failed: it closed it, and no protocol of
    # ours will hear that it did.
    tls_failed: bool = False


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
        grants: NetworkGrants | None = None,
        ca: SessionCA | None = None,
    ) -> None:
        self.session = session
        self.profile = profile
        self._blocked = blocked  # the user's "Block all network" switch
        self._bus = bus
        self.bus = bus
        self._secrets = secrets
        self._broker = broker
        self._resolver = resolver or SystemResolver()
        self._granted = granted
        self._tls = tls  # the upstreams' trust: None is the system's store
        self._ca = ca  # the session's CA, for the hosts it inspects
        self.settings = settings or ProxySettings()
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[Any], _Client] = {}
        self._connections = ConnectionCounter(profile.network.max_connections)
        rate = profile.network.bandwidth
        self._bucket = TokenBucket.per_second(rate) if rate else None
        self._grants = grants if grants is not None else NetworkGrants()
        self._unsubscribe: Callable[[], None] | None = None
        self._ledger = UploadLedger()
        self._perform: dict[type[Any], Callable[[_Client, Any], Awaitable[Any]]] = {
            ReadClient: self._read_client,
            SendClient: self._send_client,
            ReadUpstream: self._read_upstream,
            SendUpstream: self._send_upstream,
            Throttle: self._throttle_command,
            Log: self._log,
            RefuseClient: self._refuse,
            ReadCredential: self._read_credential,
            Resolve: self._resolve,
            Ask: self._ask,
            ReadGranted: self._read_granted,
            Connect: self._connect_upstream,
            UpstreamAlive: self._upstream_alive,
            DropUpstream: self._drop_upstream,
            SpliceBody: self._splice_body,
            OpenTunnel: self._open_tunnel,
            RelayTunnel: self._relay_tunnel,
            CloseTunnel: self._close_tunnel,
            RelayWebSocket: self._relay_websocket,
            RememberGrant: self._remember,
            StartTLS: self._start_tls,
        }

    async def start(self, listener: socket.socket) -> None:
        """Serves the agent's connections on `listener`, the listening socket the sidecar
        handed over (bound in the agent's namespace; app/egress/listener.py). It is ours
        from now on."""
        self._server = await asyncio.start_server(
            self._accept, sock=listener, limit=self.settings.chunk * 4
        )
        self._unsubscribe = self._grants.subscribe(self._grants_gone)

    def cut(self) -> None:
        """Ends every connection of the agent's now, tunnels and transfers under way included
        (the user blocked all network); each exchange cut is logged as refused."""
        for task, client in list(self._clients.items()):
            client.cut = "cut: the user blocked all network access of agents"
            task.cancel()

    def cut_host(self, host: str, port: int, why: str) -> int:
        """Ends the exchanges and tunnels under way to `host:port` (the user blocked it);
        returns how many. New ones are refused by the grant that blocks it."""
        cut = 0
        for task, client in list(self._clients.items()):
            record = client.core.record
            if record is None or client.cut:
                continue
            if record.host.lower().rstrip(".") == host and record.port == port:
                client.cut = why
                task.cancel()
                cut += 1
        return cut

    def _grants_gone(self, gone: list[NetworkGrant]) -> None:
        """Grants were revoked or expired: the exchanges they let through end now (a tunnel
        included); a kept-alive connection's next request is decided again."""
        ids = {grant.id for grant in gone}
        for task, client in list(self._clients.items()):
            record = client.core.record
            hit = ids.intersection(record.grants) if record is not None else set()
            if hit and not client.cut:
                client.cut = f"cut: grant {', '.join(sorted(hit))} was revoked"
                task.cancel()

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
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
        _no_delay(writer)
        core = ClientConnection(
            self.session,
            self.profile,
            self.settings,
            blocked=self._blocked,
            grants=self._grants,
            ledger=self._ledger,
        )
        client = _Client(reader, writer, core)
        self._clients[task] = client
        try:
            await self._drive(
                client, core.run(crowded=len(self._clients) > self.settings.max_clients)
            )
        except asyncio.CancelledError:
            if not client.cut:
                raise
            task.uncancel()  # ours: the connection ends here, cleanly
            self._log_cut(core.record, client.cut)
        except (ConnectionError, OSError) as e:
            log.debug("session %s: client connection ended: %s", self.session, e)
        except Exception:
            log.exception("session %s: proxy connection failed", self.session)
        finally:
            self._clients.pop(task, None)
            await self._drop_upstream(client, None)
            await self._close_tunnel(client, None)
            client.writer.close()  # (the TLS one, if the connection became inspected)
            if not client.tls_failed:
                with contextlib.suppress(ConnectionError, OSError):
                    await client.writer.wait_closed()

    async def _drive(self, client: _Client, steps: Generator[Command, Any, Any]) -> None:
        """Performs the core's commands until it is done: each result is sent back into it,
        each failure thrown into it."""
        perform = self._perform
        result: Any = None
        failure: BaseException | None = None
        turns = Turns()
        try:
            while True:
                await turns.take()
                try:
                    command = steps.send(result) if failure is None else steps.throw(failure)
                except StopIteration:
                    return
                result = failure = None
                try:
                    result = await perform[type(command)](client, command)
                except _FAILURES as e:
                    failure = e
        finally:
            steps.close()

    def _log_cut(self, record: ExchangeRecord | None, why: str) -> None:
        if record is None:
            return  # between exchanges: nothing was under way
        record.decision = "deny"
        record.rule = (
            "grant-revoked"
            if why.startswith("cut: grant")
            else "host-blocked"
            if why.startswith("cut: host")
            else "blocked-all"
        )
        record.decided_by = "user"
        record.reason = why
        self._emit(EventKind.NET_REFUSED, record)
        if record.route_header:
            self._emit(EventKind.NET_CREDENTIAL, record)

    def _emit(self, kind: EventKind, record: ExchangeRecord) -> None:
        # The profile names the agent in the Network tab (a session id alone does not).
        self._bus.emit(
            kind, self.session, record.subject, profile=self.profile.name, **record.details()
        )

    # the agent's side

    async def _read_client(self, client: _Client, command: ReadClient) -> bytes:
        return await within(client.reader.read(self.settings.chunk), command.timeout)

    async def _send_client(self, client: _Client, command: SendClient) -> None:
        client.writer.writelines(command.data)
        if command.drain:
            await client.writer.drain()

    async def _refuse(self, client: _Client, command: RefuseClient) -> None:
        try:
            client.writer.write(command.response)
            await client.writer.drain()
            if client.writer.can_write_eof():  # not inside TLS: closing says the end there
                client.writer.write_eof()
            # Closing with unread input makes the kernel send RST, which can destroy the
            # refusal before the client reads it: read (and drop) what is in flight first.
            deadline = time.monotonic() + LINGER_SECONDS
            while time.monotonic() < deadline:
                left = deadline - time.monotonic()
                if not await within(client.reader.read(65536), left):
                    break
        except (ConnectionError, OSError, RuntimeError, TimeoutError):
            pass

    async def _log(self, client: _Client, command: Log) -> None:
        self._emit(command.kind, command.record)

    async def _remember(self, client: _Client | None, command: RememberGrant) -> None:
        grant = command.grant
        await self._grants.add(grant)
        self._bus.emit(
            EventKind.GRANT_ADDED,
            self.session,
            grant.subject,
            **self._grants.grant_added_details(grant),
        )

    async def _start_tls(self, client: _Client, command: StartTLS) -> Handshake:
        """Answers the CONNECT and takes over the agent's TLS with the session's leaf for
        the host; the connection's streams are the decrypted ones from then on."""
        if self._ca is None:
            raise TLSRefused("tls-handshake", "the session has no certificate authority")
        if command.leftover or take_buffered(client.reader):
            # TLS bytes sent before the tunnel was answered would be lost to the handshake.
            raise TLSRefused("bad-request", "the agent sent data before the CONNECT was answered")
        context = self._ca.server_context(command.host)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.settings.chunk * 4)
        protocol = asyncio.StreamReaderProtocol(reader)
        # The answer and the switch happen with no await between them: the agent's first
        # TLS bytes must reach the TLS layer, not the plain stream's buffer.
        client.writer.write(command.established)
        client.tls_failed = True  # until it succeeds
        try:
            transport = await loop.start_tls(
                client.writer.transport,
                protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=self.settings.head_timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS,
            )
        except ssl.SSLError as e:
            raise handshake_refusal(command.host, e.reason or str(e)) from e
        except (ConnectionError, TimeoutError) as e:
            raise handshake_refusal(command.host, "") from e
        if transport is None:  # the agent hung up as the handshake ended
            raise handshake_refusal(command.host, "")
        client.tls_failed = False
        protocol.connection_made(transport)  # start_tls takes it as made already
        client.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        client.reader = reader
        ssl_object = transport.get_extra_info("ssl_object")
        return Handshake(
            self._ca.sni_of(ssl_object),
            ssl_object.version() or "",
            ssl_object.selected_alpn_protocol(),
        )

    # what the core needs to know or ask

    async def _read_credential(self, client: _Client, command: ReadCredential) -> str | None:
        return await asyncio.to_thread(self._secrets.get, command.name)

    async def _resolve(self, client: _Client, command: Resolve) -> list[IPAddress]:
        return await within(self._resolver.resolve(command.host, command.port), command.timeout)

    async def _read_granted(self, client: _Client, command: ReadGranted) -> GrantedContent | None:
        return None if self._granted is None else await self._granted.current()

    async def _ask(self, client: _Client | None, command: Ask) -> Answer:
        if self._broker is None:
            return denied("no front end")
        request = ConsentRequest(
            id=new_request_id(),
            session=self.session,
            profile=self.profile.name,
            kind=command.kind,
            subject=command.subject,
            details=command.details,
            timeout=self.profile.approval.timeout,
        )
        return await self._broker.ask(request)

    # the upstream's side

    async def _connect_upstream(self, client: _Client, command: Connect) -> Connected:
        reader, writer, address = await self._connect(
            command.addresses, command.port, command.tls_name
        )
        client.upstream = _Stream(reader, writer)
        return Connected(address, spliceable(client.writer, writer))

    async def _upstream_alive(self, client: _Client, command: UpstreamAlive) -> bool:
        return client.upstream is not None and not client.upstream.reader.at_eof()

    async def _drop_upstream(self, client: _Client, command: DropUpstream | None) -> None:
        upstream, client.upstream = client.upstream, None
        if upstream is None:
            return
        upstream.writer.close()
        self._connections.release()

    async def _send_upstream(self, client: _Client, command: SendUpstream) -> None:
        assert client.upstream is not None
        client.upstream.writer.writelines(command.data)
        await client.upstream.writer.drain()

    async def _read_upstream(self, client: _Client, command: ReadUpstream) -> bytes:
        assert client.upstream is not None
        return await within(client.upstream.reader.read(self.settings.chunk), command.timeout)

    async def _splice_body(self, client: _Client, command: SpliceBody) -> int:
        assert client.upstream is not None
        record = command.record

        async def admit(amount: int) -> None:
            await self._throttle(amount)
            record.down += amount

        return await splice(
            client.upstream.reader,
            client.upstream.writer,
            client.writer,
            command.length,
            command.timeout,
            admit,
        )

    async def _connect(
        self, addresses: Sequence[IPAddress], port: int, tls_name: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        if not self._connections.acquire():
            raise Refused(
                429, "limit", f"the session has {self._connections.limit} connections open already"
            )
        context = None
        if tls_name is not None:
            context = self._tls or self._system_trust()
        error: Exception | None = None
        for address in addresses:
            try:
                reader, writer = await within(
                    asyncio.open_connection(
                        str(address),
                        port,
                        ssl=context,
                        server_hostname=tls_name,
                        limit=self.settings.chunk * 4,
                    ),
                    self.settings.connect_timeout,
                )
                return reader, writer, str(address)
            except ssl.SSLCertVerificationError as e:
                # Never retried without verification: the upstream is refused, with why.
                self._connections.release()
                raise Refused(
                    502,
                    "upstream-certificate",
                    f"the upstream's certificate for {tls_name} is not trusted: {e.verify_message}",
                ) from e
            except (OSError, TimeoutError, ssl.SSLError) as e:
                error = e
        self._connections.release()
        raise Refused(502, "upstream", f"cannot connect to port {port}: {error}")

    def _system_trust(self) -> ssl.SSLContext:
        """The system's trust store, loaded once per session, not per connection."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def _throttle_command(self, client: _Client, command: Throttle) -> None:
        await self._throttle(command.amount)

    async def _throttle(self, amount: int) -> None:
        if self._bucket is not None:
            wait = self._bucket.delay(amount, time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)

    # tunnels

    async def _open_tunnel(self, client: _Client, command: OpenTunnel) -> str:
        reader, writer, address = await self._connect(command.addresses, command.port, None)
        client.tunnel = _Stream(reader, writer)
        return address

    async def _close_tunnel(self, client: _Client, command: CloseTunnel | None) -> None:
        tunnel, client.tunnel = client.tunnel, None
        if tunnel is None:
            return
        tunnel.writer.close()
        self._connections.release()

    async def _relay_tunnel(self, client: _Client, command: RelayTunnel) -> None:
        assert client.tunnel is not None
        reader, writer = client.tunnel.reader, client.tunnel.writer
        record = command.record
        admit_up = self._tunnel_upload(command.uploads)

        async def admit_down(amount: int) -> None:
            await self._throttle(amount)
            record.down += amount

        if self.settings.splice and spliceable(client.writer, writer):
            await _both(
                self._splice_one_way(client.reader, client.writer, writer, admit_up, command.first),
                self._splice_one_way(reader, writer, client.writer, admit_down),
            )
        else:
            await _both(
                self._pump(client.reader, writer, admit_up, command.first),
                self._pump(reader, client.writer, admit_down),
            )

    def _tunnel_upload(self, uploads: TunnelUploads) -> Callable[[int], Awaitable[None]]:
        """What runs before `amount` more bytes go up a tunnel: the upload gate (the bytes
        wait for the user's answer if it asks), then the bandwidth limit."""

        async def admit(amount: int) -> None:
            question = uploads.question(amount)
            if question is not None:
                answer = await self._ask(None, question)
                uploads.answered(answer, amount)
                grant = uploads.grant_for(answer)
                if grant is not None:
                    await self._remember(None, RememberGrant(grant))
            await self._throttle(amount)
            uploads.sent(amount)

        return admit

    async def _relay_websocket(self, client: _Client, command: RelayWebSocket) -> None:
        assert client.upstream is not None
        upstream, relay = client.upstream, command.relay
        admit_up = self._tunnel_upload(relay.uploads)

        async def up() -> None:
            data = command.first_up
            while True:
                if not data:
                    data = await client.reader.read(self.settings.chunk)
                    if not data:
                        _end(upstream.writer)
                        return
                await admit_up(len(data))
                relay.up(data)
                upstream.writer.write(data)
                await upstream.writer.drain()
                data = b""

        async def down() -> None:
            data = command.first_down
            while True:
                if not data:
                    data = await upstream.reader.read(self.settings.chunk)
                    if not data:
                        client.writer.write(relay.down_ended())
                        _end(client.writer)
                        return
                await self._throttle(len(data))
                client.writer.write(relay.down(data))
                await client.writer.drain()
                data = b""

        # Inside TLS the agent's side cannot be half-closed: when the upstream is done, so
        # is the connection.
        await _both(
            up(), down(), TUNNEL_HALF_OPEN_SECONDS if client.writer.can_write_eof() else 0.0
        )

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        admit: Callable[[int], Awaitable[None]],
        first: bytes = b"",
    ) -> None:
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

    async def _splice_one_way(
        self,
        source: asyncio.StreamReader,
        source_writer: asyncio.StreamWriter,
        sink: asyncio.StreamWriter,
        admit: Callable[[int], Awaitable[None]],
        first: bytes = b"",
    ) -> None:
        await splice(source, source_writer, sink, None, None, admit, first)
        with contextlib.suppress(OSError):
            sink.write_eof()


def _end(writer: asyncio.StreamWriter) -> None:
    """Says the end of what goes one way, where the stream can (TLS cannot half-close)."""
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """Small writes go out at once. asyncio sets TCP_NODELAY only on sockets whose `proto`
    says TCP, which an accepted one's (0) does not: a response head and its short body, two
    writes, then waited for the agent's delayed ACK (40 ms) on every inspected request."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _both(
    up: Coroutine[Any, Any, None],
    down: Coroutine[Any, Any, None],
    half_open: float = TUNNEL_HALF_OPEN_SECONDS,
) -> None:
    """Runs a tunnel's two directions. The first failure ends both; when the upstream side
    ends, the agent's side gets `TUNNEL_HALF_OPEN_SECONDS` to finish (a half-open tunnel
    must not be held forever)."""
    up_task, down_task = asyncio.ensure_future(up), asyncio.ensure_future(down)
    try:
        # FIRST_COMPLETED: with FIRST_EXCEPTION, an upstream that ended cleanly waited for
        # the agent's side however long it stayed open.
        done, _ = await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        if down_task.done() and not up_task.done():
            await asyncio.wait({up_task}, timeout=half_open)
        elif up_task.done():
            await down_task
        if up_task.done():
            up_task.result()
    finally:
        for task in (up_task, down_task):
            task.cancel()
        await asyncio.gather(up_task, down_task, return_exceptions=True)
