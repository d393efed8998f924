"""The output pump: the agent's streams, read in a worker thread, handed to the loop (through
app.threads, the one way back), written to the session's output there, and turned into
`session.output` events one line at a time, at a bounded pace."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.errors import EngineError
from app.events import EventBudget, EventBus, EventKind
from app.history import OutputLog
from app.sessions.engine import Chunk
from app.sessions.model import DrainingOutput, Output
from app.threads import call_on_loop

log = logging.getLogger(__name__)

MAX_EVENT_LINE = 4096
# Output lines become events (and audit records) at most this fast per session, after a first
# burst: an agent printing at full speed must not turn into as many audit records. What is
# held back is counted, per stream, in one event before the next line that goes through.
OUTPUT_LINES_BURST = 2000
OUTPUT_LINES_PER_SECOND = 200


@dataclass(slots=True)
class _LineBudget:
    """A token bucket of output-line events, and the lines held back, per stream."""

    bucket: EventBudget = field(
        default_factory=lambda: EventBudget(OUTPUT_LINES_BURST, OUTPUT_LINES_PER_SECOND)
    )
    held: dict[str, list[int]] = field(default_factory=dict)  # stream -> [lines, bytes]

    def take(self) -> bool:
        return self.bucket.take()

    def hold(self, stream: str, size: int) -> None:
        held = self.held.setdefault(stream, [0, 0])
        held[0] += 1
        held[1] += size


class OutputPump:
    """One session's output: `run` in a worker thread, everything else on the loop."""

    def __init__(
        self, session: str, bus: EventBus, output: Output, kept: OutputLog | None = None
    ) -> None:
        self.session = session
        self._bus = bus
        self._output = output
        self._kept = kept  # the history's copy, written in the reading thread
        self._line_buffers: dict[str, bytes] = {}
        self._budget = _LineBudget()
        self._draining: set[asyncio.Task[None]] = set()

    def run(
        self,
        stream: Iterable[Chunk],
        loop: asyncio.AbstractEventLoop,
        drained: asyncio.Future[None],
    ) -> None:
        """Reads the agent's streams (in a thread) and hands each piece to the loop; waits
        for an output that can fall behind to take it before reading on. Sets `drained`
        (on the loop) when the streams end."""
        draining = isinstance(self._output, DrainingOutput)
        try:
            for stdout, stderr in stream:
                for name, data in (("stdout", stdout), ("stderr", stderr)):
                    if not data:
                        continue
                    if self._kept is not None:
                        self._kept.write(name, data)
                    if not draining:
                        if not call_on_loop(loop, self.write, name, data):
                            log.debug(
                                "output stream of %s abandoned: the loop closed", self.session
                            )
                            return
                        continue
                    delivered: concurrent.futures.Future[bool] = concurrent.futures.Future()
                    if not call_on_loop(loop, self._deliver, name, data, delivered):
                        return
                    draining = _wait_delivered(delivered, loop)
        except (EngineError, OSError, ValueError) as e:
            log.debug("output stream of %s ended: %s", self.session, e)
        finally:
            call_on_loop(loop, _set_done, drained)

    def _deliver(self, name: str, data: bytes, delivered: concurrent.futures.Future[bool]) -> None:
        """On the loop: writes a piece of output, then has `delivered` say, once the output
        has room again, whether to wait for it with the next piece (False once the output is
        gone, its reader left: the rest is read, and not held up)."""
        self.write(name, data)
        task = asyncio.get_running_loop().create_task(self._drain(delivered))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, delivered: concurrent.futures.Future[bool]) -> None:
        assert isinstance(self._output, DrainingOutput)
        try:
            await self._output.drain()
            room = True
        except (ConnectionError, OSError):
            room = False
        # The reading thread cancels it if it gave up waiting.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            delivered.set_result(room)

    def write(self, name: str, data: bytes) -> None:
        """On the loop: one piece of a stream to the output, its whole lines to the bus."""
        try:
            self._output.write(name, data)
        except OSError as e:
            log.warning("cannot write the agent's %s: %s", name, e)
        buffered = self._line_buffers.get(name, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > MAX_EVENT_LINE:
            lines.append(rest)
            rest = b""
        self._line_buffers[name] = rest
        for line in lines:
            self._emit_line(name, line)

    def flush(self) -> None:
        """The streams ended: the last partial lines and the held-back count go out."""
        for name, rest in self._line_buffers.items():
            if rest:
                self._emit_line(name, rest)
        self._line_buffers.clear()
        self._emit_held()

    def _emit_line(self, stream: str, line: bytes) -> None:
        if not self._budget.take():
            self._budget.hold(stream, len(line))
            return
        self._emit_held()
        text = line[:MAX_EVENT_LINE].decode("utf-8", "replace")
        self._bus.emit(EventKind.SESSION_OUTPUT, self.session, stream, text=text, size=len(line))

    def _emit_held(self) -> None:
        """One event for each stream's lines held back since the last line that went through
        (the output itself is whole: only the events are summed up)."""
        for stream, (lines, size) in self._budget.held.items():
            self._bus.emit(
                EventKind.SESSION_OUTPUT,
                self.session,
                stream,
                size=size,
                lines=lines,
                text=f"[{lines} more line(s), {size} bytes: printed faster than "
                f"{OUTPUT_LINES_PER_SECOND} lines a second, not recorded one by one]",
            )
        self._budget.held.clear()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wait_delivered(
    delivered: concurrent.futures.Future[bool], loop: asyncio.AbstractEventLoop
) -> bool:
    """Waits, in the reading thread, for the loop to deliver a piece; whether to go on
    waiting for the next ones. Gives up if the loop stops meanwhile."""
    while True:
        try:
            return delivered.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            if loop.is_closed() or not loop.is_running():
                delivered.cancel()
                return False
        except concurrent.futures.CancelledError:
            return False
