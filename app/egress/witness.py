"""The supervisor's end of the sidecar witness's reports: attempts to leave around the
proxy, turned into `net.blocked` events through a limiter."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from app.egress.aio import within
from app.egress.blocked import (
    MAX_LINE,
    BlockedAttempt,
    BlockedLimiter,
    Coalesced,
    Ready,
    Uncounted,
    parse_report,
)
from app.events import EventBus, EventKind

log = logging.getLogger(__name__)


class BlockedLog:
    """The supervisor's end of the sidecar witness's reports (`netlog.sock`): one connection,
    one JSON line per attempt to leave around the proxy, each a `net.blocked` event — through
    a limiter, so that an agent flooding packets floods nothing here. `ready` is set once the
    witness owns the namespace's routes and has dropped its privileges."""

    def __init__(self, session: str, bus: EventBus, limiter: BlockedLimiter | None = None) -> None:
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
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(path), limit=MAX_LINE + 1
        )
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
                    line = await within(reader.readline(), window)
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
                log.warning(
                    "session %s: the network witness hung up; direct attempts to "
                    "leave are no longer reported",
                    self.session,
                )

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
        self._bus.emit(
            EventKind.NET_BLOCKED,
            self.session,
            "*",
            protocol="*",
            count=held.count,
            destinations=held.destinations,
            coalesced=True,
            decision="deny",
            rule="no-route",
            reason=f"{held.count} more direct attempts to leave, counted together",
        )

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            log.warning("session %s: the network witness sent %s", self.session, what)
