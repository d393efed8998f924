"""Benchmarks: events through the bus, audit appends, and `audit verify` on a million records.

Run with `pytest tests/bench/bench_events.py -m bench -s`; they print figures, assert no timing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from app.audit import AuditLog, AuditRecord, records, verify
from app.events import Event, EventBus, EventKind

pytestmark = pytest.mark.bench


def event(n: int) -> Event:
    return Event(
        EventKind.FILE_WRITTEN,
        "s-3f2a9c41",
        f"/home/user/projects/report/chapter-{n % 50}.md",
        {"count": 1 + n % 7, "size": 4096 + n},
    )


def test_events_per_second_to_three_subscribers_and_the_audit(tmp_path: Path) -> None:
    total = 200_000
    bus = EventBus()

    async def main() -> tuple[float, list[int], list[int]]:
        subscriptions = [bus.subscribe() for _ in range(3)]

        async def consume(index: int) -> int:
            got = 0
            async for _ in subscriptions[index]:
                got += 1
            return got

        consumers = [asyncio.create_task(consume(i)) for i in range(3)]
        started = time.perf_counter()
        for n in range(total):
            bus.publish(event(n))
            if n % 500 == 499:
                await asyncio.sleep(0)  # the supervisor's loop does other work between bursts
        for subscription in subscriptions:
            subscription.close()
        received = await asyncio.gather(*consumers)
        elapsed = time.perf_counter() - started
        return elapsed, list(received), [s.dropped for s in subscriptions]

    with AuditLog(tmp_path / "audit") as log:
        bus.attach(log.sink)
        elapsed, received, dropped = asyncio.run(main())
    audited = sum(isinstance(r, AuditRecord) for r in records(tmp_path / "audit"))

    print(
        f"\nbus: {total / elapsed:,.0f} events/s to 3 subscribers + the audit sink"
        f" ({total:,} events in {elapsed:.2f} s); received {received}, dropped {dropped};"
        f" audited {audited:,}/{total:,} (target >= 10,000/s, no audit loss)"
    )


def test_audit_appends_per_second(tmp_path: Path) -> None:
    total = 200_000
    events = [event(n) for n in range(1000)]
    with AuditLog(tmp_path / "audit") as log:
        started = time.perf_counter()
        for n in range(total):
            log.append(events[n % 1000])
        elapsed = time.perf_counter() - started

    print(
        f"\naudit: {total / elapsed:,.0f} appends/s ({total:,} in {elapsed:.2f} s,"
        f" fsync once a second) (target >= 20,000/s)"
    )


def test_verify_a_million_records(tmp_path: Path) -> None:
    total = 1_000_000
    events = [event(n) for n in range(1000)]
    with AuditLog(tmp_path / "audit") as log:
        for n in range(total):
            log.append(events[n % 1000])
    size = sum(p.stat().st_size for p in (tmp_path / "audit").glob("*.jsonl"))

    started = time.perf_counter()
    result = verify(tmp_path / "audit")
    elapsed = time.perf_counter() - started

    print(
        f"\nverify: {result.records:,} records ({size / 2**20:,.0f} MiB in {result.segments}"
        f" segments) in {elapsed:.2f} s, {result.records / elapsed:,.0f} records/s,"
        f" ok={result.ok} (target <= 10 s)"
    )
