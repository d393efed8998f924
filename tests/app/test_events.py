"""The event bus: lossless sinks, lossy subscriptions that count and report what they lose."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.audit import AuditLog, AuditRecord, records
from app.events import Event, EventBus, EventKind


def event(n: int) -> Event:
    return Event(EventKind.FILE_WRITTEN, "s1", f"/f{n}", {"n": n})


def test_every_subscriber_gets_every_event_in_order(bus: EventBus) -> None:
    async def main() -> list[list[int]]:
        subscriptions = [bus.subscribe() for _ in range(3)]
        for n in range(100):
            bus.publish(event(n))
        for subscription in subscriptions:
            subscription.close()
        return [[e.details["n"] async for e in s] for s in subscriptions]

    assert asyncio.run(main()) == [list(range(100))] * 3


def test_a_slow_subscriber_loses_counted_events_and_is_told_where(bus: EventBus) -> None:
    slow = bus.subscribe(maxsize=10)
    for n in range(25):
        bus.publish(event(n))
    bus.publish(event(25))  # still dropped: the queue is full until the consumer reads

    got = [slow.get_nowait() for _ in range(10)]
    assert [e.details["n"] for e in got if e is not None] == list(range(10))
    bus.publish(event(26))
    notice, after = slow.get_nowait(), slow.get_nowait()

    assert slow.dropped == 16
    assert notice is not None and notice.kind is EventKind.STREAM_DROPPED
    assert notice.details["count"] == 16
    assert after is not None and after.details["n"] == 26
    assert slow.get_nowait() is None


def test_a_drained_subscriber_hears_of_its_loss_without_waiting(bus: EventBus) -> None:
    slow = bus.subscribe(maxsize=1)
    bus.publish(event(0))
    bus.publish(event(1))

    first, notice = slow.get_nowait(), slow.get_nowait()

    assert first is not None and first.details["n"] == 0
    assert notice is not None and notice.details == {"count": 1}


def test_the_audit_sink_loses_nothing_while_subscribers_drop(
    bus: EventBus, audit_dir: Path
) -> None:
    with AuditLog(audit_dir) as log:
        bus.attach(log.sink)
        slow = bus.subscribe(maxsize=5)
        for n in range(1000):
            bus.publish(event(n))

    kept = [r for r in records(audit_dir) if isinstance(r, AuditRecord)]
    assert len(kept) == 1000
    assert slow.dropped == 995


def test_a_failing_sink_does_not_stop_the_others(bus: EventBus) -> None:
    def broken(event: Event) -> None:
        raise OSError("disk full")

    got: list[Event] = []
    bus.attach(broken)
    bus.attach(got.append)

    bus.emit(EventKind.SESSION_STARTED, "s1", "s1")

    assert [e.kind for e in got] == [EventKind.SESSION_STARTED]


def test_a_waiting_subscriber_wakes_on_publish_and_ends_on_close(bus: EventBus) -> None:
    async def main() -> list[str]:
        subscription = bus.subscribe()

        async def consume() -> list[str]:
            return [e.subject async for e in subscription]

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)
        bus.emit(EventKind.SESSION_STARTED, "s1", "first")
        await asyncio.sleep(0)
        bus.emit(EventKind.SESSION_EXITED, "s1", "second")
        subscription.close()
        return await asyncio.wait_for(consumer, 5)

    assert asyncio.run(main()) == ["first", "second"]


def test_detach_and_unsubscribe_stop_delivery(bus: EventBus) -> None:
    got: list[Event] = []
    bus.attach(got.append)
    subscription = bus.subscribe()
    bus.detach(got.append)
    subscription.close()

    bus.emit(EventKind.SESSION_STARTED, "s1", "s1")

    assert got == []
    assert subscription.get_nowait() is None
