"""The bus socket a gVisor agent connects to: a relay that answers D-Bus's authentication for
the agent and then copies bytes to and from the session's private bus.

Why: under gVisor the agent's connection to a bind-mounted unix socket is made on the host by
gVisor's gofer, so the daemon sees the gofer's uid (root), not the agent's, and refuses the
EXTERNAL uid the agent claims. The uid proves nothing on this bus anyway — any uid may
connect; having the socket in the container is the access (portal/bus.py) — so the relay
accepts the agent's EXTERNAL claim, authenticates upstream as the supervisor (the daemon's
own uid), and from `BEGIN` on only copies: every message still meets the daemon's policy.
Unix fd passing is refused at negotiation (gVisor's host sockets carry none). GLib clients
(gdbus, GTK) send kernel credentials with their first byte, which this runsc refuses
(EINVAL) before any byte reaches the relay: they cannot use the portal under gVisor;
clients that do not (dbus-fast, Airlock's own MCP server and `airlock_ask`) can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0
MAX_AUTH_LINE = 512
MAX_AUTH_LINES = 8
CHUNK = 65536


class AuthRelay:
    """Listens at a socket of its own and relays each connection to `upstream` (the private
    bus's socket) once the agent's side of the authentication is answered."""

    def __init__(self, upstream: Path) -> None:
        self.upstream = upstream
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, path: Path) -> None:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.parent.chmod(0o755)  # searchable by the agent's uid, which may not be ours
        self._server = await asyncio.start_unix_server(self._accepted, str(path))
        path.chmod(0o666)  # the directory, mounted into this session only, is the guard

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.wait_for(
                self._authenticate(reader, writer), AUTH_TIMEOUT
            )
            upstream = up_writer
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        except (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError) as e:
            log.debug("bus relay connection ended: %s", e)
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The SASL exchange up to BEGIN: the agent's side answered here, the daemon's done
        as the supervisor. Anything unexpected ends the connection."""
        if await reader.readexactly(1) != b"\0":
            raise ValueError("no credentials byte")
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        try:
            up_writer.write(
                b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n"
            )
            reply = await up_reader.readline()
            if not reply.startswith(b"OK "):
                raise ValueError(f"the bus refused the relay: {reply[:80]!r}")
            ok = reply
            awaiting_data = False
            for _ in range(MAX_AUTH_LINES):
                line = await reader.readline()
                if len(line) > MAX_AUTH_LINE or not line.endswith(b"\r\n"):
                    raise ValueError("bad authentication line")
                command = line.split()[0] if line.split() else b""
                if command == b"AUTH" and line.split()[1:2] == [b"EXTERNAL"]:
                    # With an identity: accepted; without: the client sends it as DATA.
                    awaiting_data = len(line.split()) == 2
                    writer.write(b"DATA\r\n" if awaiting_data else ok)
                elif command == b"DATA" and awaiting_data:
                    awaiting_data = False
                    writer.write(ok)
                elif command == b"AUTH" or command == b"CANCEL":
                    writer.write(b"REJECTED EXTERNAL\r\n")
                elif command == b"NEGOTIATE_UNIX_FD":
                    writer.write(b"ERROR no fd passing through gVisor's host sockets\r\n")
                elif command == b"BEGIN":
                    up_writer.write(b"BEGIN\r\n")
                    return up_reader, up_writer
                else:
                    writer.write(b"ERROR\r\n")
                await writer.drain()
            raise ValueError("too many authentication lines")
        except BaseException:
            up_writer.close()
            raise


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
