"""The output pump (app/sessions/pump.py): pieces of the agent's streams become whole lines on
the bus, long lines are cut, a fast printer is summed up, and a slow reader holds the agent up
(the stream is read no faster than the output drains)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from app.events import Event, EventBus, EventKind
from app.sessions.engine import Chunk
from app.sessions.pump import MAX_EVENT_LINE, OUTPUT_LINES_BURST, OutputPump
from tests.support import CollectedOutput


def pumped(chunks: list[Chunk], output: object | None = None) -> tuple[list[Event], object]:
    bus = EventBus()
    events: list[Event] = []
    bus.attach(events.append)
    target = output if output is not None else CollectedOutput()

    async def scenario() -> None:
        pump = OutputPump("s1", bus, target)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        drained = loop.create_future()
        await loop.run_in_executor(None, pump.run, iter(chunks), loop, drained)
        await drained
        pump.flush()

    asyncio.run(scenario())
    return events, target


def lines(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.subject, e.details["text"]) for e in events if e.kind is EventKind.SESSION_OUTPUT]


def test_pieces_become_whole_lines_per_stream() -> None:
    events, output = pumped([(b"hel", None), (b"lo\nwor", b"err"), (None, b"or\n"), (b"ld", None)])
    assert lines(events) == [("stdout", "hello"), ("stderr", "error"), ("stdout", "world")]
    assert isinstance(output, CollectedOutput)
    assert output.text("stdout") == "hello\nworld" and output.text("stderr") == "error\n"


def test_a_line_longer_than_an_event_is_cut_not_held() -> None:
    long = b"x" * (MAX_EVENT_LINE + 10)
    events, _ = pumped([(long, None), (b"y\n", None)])
    texts = lines(events)
    assert texts[0] == ("stdout", "x" * MAX_EVENT_LINE)
    assert texts[1] == ("stdout", "y")


def test_lines_past_the_burst_are_summed_up() -> None:
    count = OUTPUT_LINES_BURST + 500
    events, _ = pumped([(b"".join(b"%d\n" % i for i in range(count)), None)])
    one_by_one = [e for e in events if "lines" not in e.details]
    summed = [e for e in events if "lines" in e.details]
    assert len(one_by_one) + sum(e.details["lines"] for e in summed) == count
    assert len(one_by_one) >= OUTPUT_LINES_BURST and summed


class SlowReader:
    """A DrainingOutput whose reader takes one piece at a time, when the test says so."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.room = asyncio.Event()

    def write(self, stream: str, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        await self.room.wait()
        self.room.clear()


def test_a_reader_that_falls_behind_holds_the_stream_up() -> None:
    read: list[int] = []
    reading = threading.Event()

    def stream() -> Iterator[Chunk]:
        for i in range(3):
            read.append(i)
            reading.set()
            yield (b"%d\n" % i, None)

    async def scenario() -> list[int]:
        bus = EventBus()
        output = SlowReader()
        pump = OutputPump("s1", bus, output)
        loop = asyncio.get_running_loop()
        drained = loop.create_future()
        reader = loop.run_in_executor(None, pump.run, stream(), loop, drained)
        await asyncio.sleep(0.3)
        held = list(read)  # the first piece is out, waiting for room: no second one read
        for _ in range(3):
            output.room.set()
            await asyncio.sleep(0.05)
        await reader
        await drained
        assert output.written == [b"0\n", b"1\n", b"2\n"]
        return held

    assert asyncio.run(scenario()) == [0]
