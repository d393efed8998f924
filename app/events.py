"""The one in-process event stream: typed events fanned out to subscribers without blocking."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    """What happened. Dotted names group kinds by the part of Airlock that reports them."""

    SESSION_STARTED = "session.started"
    SESSION_OUTPUT = "session.output"
    SESSION_EXITED = "session.exited"
    SESSION_OOM = "session.oom-killed"
    SESSION_LIMIT = "session.limit-hit"
    SESSION_TIMEOUT = "session.timed-out"
    SESSION_SWEPT = "session.swept"
    SANDBOX_VERIFIED = "sandbox.verified"  # the self-check passed: the agent's command runs
    SANDBOX_REFUSED = "sandbox.refused"  # a check failed: the session is refused
    GRANT_ADDED = "grant.added"
    GRANT_REVOKED = "grant.revoked"
    GRANT_SKIPPED = "grant.skipped"
    CHANGES_COMMITTED = "changes.committed"
    CHANGES_DISCARDED = "changes.discarded"
    CHANGE_REFUSED = "changes.refused"
    CHANGE_CONFLICT = "changes.conflict"
    COMMIT_UNDONE = "changes.undone"
    REQUEST_ASKED = "request.asked"
    REQUEST_ANSWERED = "request.answered"
    STREAM_DROPPED = "stream.dropped"
    FILE_OPENED = "file.opened"
    FILE_READ = "file.read"  # closed without having been written
    FILE_WRITTEN = "file.written"
    FILE_CREATED = "file.created"
    FILE_DELETED = "file.deleted"
    FILE_MOVED = "file.moved"
    FILE_UNWATCHED = "file.unwatched"  # a tree could not be watched in full (inotify limits)
    ACTIVITY_GAP = "activity.gap"  # the file watch lost events for a while; rescanned
    ACTIVITY_UNWATCHED = "activity.unwatched"  # lost them again and again: partly unwatched
    AUDIT_RECOVERED = "audit.recovered"  # a torn record left by a crash was cut off the log
    AUDIT_GAP = "audit.gap"  # events that could not be written (disk full), counted
    NET_REQUEST = "net.request"  # one plain-HTTP or route request, at its end
    NET_TUNNEL = "net.tunnel"  # one CONNECT tunnel, at its end
    NET_REFUSED = "net.refused"  # refused by policy, by the user, by a limit, or as bad HTTP
    # A route added its credential to a request (after its net.request or net.refused):
    # which route, where, what; never the key.
    NET_CREDENTIAL = "net.credential"
    NET_BLOCKED = "net.blocked"  # a packet that tried to leave around the proxy, dropped


def _frozen(details: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(details))


@dataclass(slots=True)
class EventBudget:
    """At most `rate` a second, after a first `burst`: how events that an agent can make at
    any speed (output lines, file activity) become audit records at a bounded pace."""

    burst: float
    rate: float
    tokens: float = field(init=False)
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. `subject` is what it happened to, as the user knows it
    (a host path, a host:port, a session id); `details` holds JSON-ready values only."""

    kind: EventKind
    session: str | None
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", _frozen(self.details))

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": str(self.kind),
            "session": self.session,
            "subject": self.subject,
            "details": dict(self.details),
        }


Sink = Callable[[Event], None]


class Subscription:
    """A bounded, lossy view of the stream for one consumer, read with `async for`.

    When the consumer falls `maxsize` events behind, newer events are dropped and counted;
    the consumer then receives one `stream.dropped` event carrying the count at the place
    of the gap (after the events it did get, before the next one), so it always knows what
    it missed and where.
    """

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._maxsize = maxsize
        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._unreported_drops = 0
        self.dropped = 0
        self.closed = False

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            self.dropped += 1
            self._unreported_drops += 1
        else:
            if self._unreported_drops:
                # The notice goes where the gap is, after the events queued before the loss;
                # it may take the queue one past `maxsize`, which bounds it all the same.
                self._queue.append(self._drop_notice())
            self._queue.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._bus.unsubscribe(self)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _drop_notice(self) -> Event:
        count, self._unreported_drops = self._unreported_drops, 0
        return Event(EventKind.STREAM_DROPPED, None, "stream", {"count": count})

    def get_nowait(self) -> Event | None:
        if self._queue:
            return self._queue.popleft()
        # Drained: report a loss now rather than waiting for the next event to carry it.
        return self._drop_notice() if self._unreported_drops else None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class EventBus:
    """Publishes events to lossless sinks (called inline, e.g. the audit log) and to lossy
    subscriptions (UI, `airlock watch`). `publish` never blocks and never raises because of
    a consumer: a failing sink is logged and the others still get the event.

    Not thread-safe: publish on the loop's thread (other threads hand events over with
    `loop.call_soon_threadsafe`)."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._subscriptions: list[Subscription] = []

    def attach(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def detach(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        subscription = Subscription(self, maxsize)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish(self, event: Event) -> None:
        for sink in tuple(self._sinks):
            try:
                sink(event)
            except Exception:
                log.exception("event sink %r failed on %s", sink, event.kind)
        for subscription in tuple(self._subscriptions):
            subscription.offer(event)

    def emit(
        self,
        kind: EventKind,
        session: str | None,
        subject: str,
        **details: Any,
    ) -> Event:
        event = Event(kind, session, subject, details)
        self.publish(event)
        return event
