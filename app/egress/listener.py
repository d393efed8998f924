"""The proxy's port in the agent's network namespace, handed over to the supervisor.

The sidecar's witness binds 127.0.0.1:3128 in the namespace it shares with the agent, then
passes the listening socket itself (SCM_RIGHTS) over `listener.sock` in the session's `net/`
directory and closes its own copy. From then on the supervisor's proxy accepts the agent's
connections directly: a socket keeps the namespace it was made in, wherever its descriptor
goes. No relay process copies or splices the bytes in between, so the agent's path costs
what the proxy costs (a relay process on the path took 0.54–0.96× of direct loopback speed
on two cores, where the proxy alone runs at 1.0×; tests/bench/bench_proxy.py).

The hand-over is untrusted input like any other: one connection, one message, one
descriptor, which must be a listening IPv4 TCP socket bound to 127.0.0.1 on the proxy port,
sent by the sidecar's own PID 1 (checked with SO_PEERCRED against what the engine reports).
Anything else is refused with the reason, and the session does not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from pathlib import Path

from app.errors import EgressError

log = logging.getLogger(__name__)

MESSAGE = b"airlock-listener\n"
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def check_listener(sock: socket.socket, port: int) -> str | None:
    """Why `sock` is not the proxy's listening socket on 127.0.0.1:`port`, or None."""
    if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
        return f"not a TCP/IPv4 socket ({sock.family!r}, {sock.type!r})"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "not a listening socket"
    address = sock.getsockname()
    if address != ("127.0.0.1", port):
        return f"bound to {address[0]}:{address[1]}, not 127.0.0.1:{port}"
    return None


class ListenerHandover:
    """The supervisor's end of `listener.sock`: takes one listening socket, checks it, and
    keeps it for the session's proxy (`take()`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = asyncio.Event()  # set once a socket came, or the hand-over failed
        self.error: str | None = None
        self.sender: int | None = None  # the pid that handed it over, as seen from here
        self._listener: socket.socket | None = None
        self._server: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, path: Path) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            server.bind(str(path))
            os.chmod(path, 0o666)  # the witness runs as the agent's uid; the directory guards
            server.listen(1)
            server.setblocking(False)
        except OSError:
            server.close()
            raise
        self._server = server
        self._task = asyncio.create_task(self._receive(server))

    def take(self) -> socket.socket:
        """The listening socket, now the caller's; raises EgressError if there is none."""
        listener, self._listener = self._listener, None
        if listener is None:
            raise EgressError(
                "the network bridge did not hand over the proxy's port: "
                f"{self.error or 'nothing received'}"
            )
        return listener

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._close_server()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _receive(self, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(server)
        finally:
            self._close_server()  # one hand-over per session: nobody may connect after it
        with conn:
            try:
                self._listener = await self._read(loop, conn)
            except EgressError as e:
                self.error = str(e)
                log.warning("refused the network bridge's hand-over: %s", e)
            finally:
                self.received.set()

    async def _read(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> socket.socket:
        pid, _, _ = _CREDENTIALS.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        )
        self.sender = pid
        await _readable(loop, conn)
        try:
            message, fds, flags, _ = socket.recv_fds(conn, len(MESSAGE) + 1, 4)
        except OSError as e:
            raise EgressError(f"cannot read the hand-over: {e}") from e
        kept: socket.socket | None = None
        try:
            if message != MESSAGE or len(fds) != 1 or flags & socket.MSG_CTRUNC:
                raise EgressError(
                    f"expected {MESSAGE!r} with one descriptor, got "
                    f"{message[:40]!r} with {len(fds)}"
                )
            if not stat.S_ISSOCK(os.fstat(fds[0]).st_mode):
                raise EgressError("the descriptor handed over is not a socket")
            kept = socket.socket(fileno=fds.pop())
            why = check_listener(kept, self.port)
            if why is not None:
                raise EgressError(f"the socket handed over is {why}")
            kept.setblocking(False)
            listener, kept = kept, None
            return listener
        finally:
            for fd in fds:
                os.close(fd)
            if kept is not None:
                kept.close()

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                os.unlink(server.getsockname())
            server.close()


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
