"""The one bridge from the core to Qt: an EventBus subscription turned into batched Qt signals.

The bus can carry tens of thousands of events a second; a signal per event would flood the
Qt event loop. The bridge drains the subscription in one go and emits a list at most
`1 / interval` times a second, plus cheap "something changed" signals the views refresh on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from PySide6.QtCore import QObject, Signal

from app.events import Event, EventBus, EventKind, Subscription

log = logging.getLogger(__name__)

SESSION_KINDS = frozenset(
    {
        EventKind.SESSION_STARTED,
        EventKind.SESSION_EXITED,
        EventKind.SESSION_SWEPT,
    }
)
GRANT_KINDS = frozenset(
    {
        EventKind.GRANT_ADDED,
        EventKind.GRANT_REVOKED,
        EventKind.SESSION_EXITED,
        EventKind.SESSION_SWEPT,
    }
)
CHANGE_KINDS = frozenset(
    {
        EventKind.FILE_WRITTEN,
        EventKind.FILE_CREATED,
        EventKind.FILE_DELETED,
        EventKind.FILE_MOVED,
        EventKind.CHANGES_COMMITTED,
        EventKind.CHANGES_DISCARDED,
        EventKind.COMMIT_UNDONE,
        EventKind.SESSION_EXITED,
    }
)


class EventBridge(QObject):
    events = Signal(list)  # list[Event], in order, at most 1/interval batches a second
    sessions_changed = Signal()
    grants_changed = Signal()
    changes_changed = Signal(str)  # a session whose staged changes may differ now

    def __init__(
        self,
        bus: EventBus,
        *,
        interval: float = 0.1,
        backlog: int = 100_000,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._bus = bus
        self._interval = interval
        self._backlog = backlog
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.batches = 0

    def start(self) -> None:
        if self._task is None:
            self._subscription = self._bus.subscribe(self._backlog)
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def dropped(self) -> int:
        return self._subscription.dropped if self._subscription is not None else 0

    async def _pump(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        async for first in subscription:
            batch = [first]
            while (event := subscription.get_nowait()) is not None:
                batch.append(event)
            try:
                self._deliver(batch)
            except Exception:
                # A view's bug must not stop the stream for every other view.
                log.exception("a view failed on a batch of %d events", len(batch))
            # Coalesce: whatever arrives meanwhile goes out with the next batch.
            await asyncio.sleep(self._interval)

    def _deliver(self, batch: list[Event]) -> None:
        self.delivered += len(batch)
        self.batches += 1
        kinds = {event.kind for event in batch}
        self.events.emit(batch)
        if kinds & SESSION_KINDS:
            self.sessions_changed.emit()
        if kinds & GRANT_KINDS:
            self.grants_changed.emit()
        if kinds & CHANGE_KINDS:
            for session in {e.session for e in batch if e.kind in CHANGE_KINDS and e.session}:
                self.changes_changed.emit(session)
