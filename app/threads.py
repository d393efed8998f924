"""Threads and the loop: `BlockingCalls`, where blocking calls run so that none waits for
another's thread, and `call_on_loop`, the one way from a worker thread back to the loop (a
guarded `loop.call_soon_threadsafe`). Everything a thread has for the loop (output pieces, file
activity, events) goes through it; objects of the loop (the event bus, futures, tasks) are
touched only on the loop's thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

from app.events import Event, EventBus

_Args = TypeVarTuple("_Args")
_T = TypeVar("_T")


def call_on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[[Unpack[_Args]], object], *args: *_Args
) -> bool:
    """Has the loop's thread call `callback(*args)` soon. False if the loop is closed: there
    is no one left to hand the work to, which the caller may take as the end of its job."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # closed
        return False
    return True


def thread_bus(bus: EventBus, loop: asyncio.AbstractEventLoop) -> EventBus:
    """A bus for work done in worker threads: what is emitted on it is published on `bus`,
    on the loop's thread (an event emitted after the loop closed is dropped)."""
    relay = EventBus()

    def hand_over(event: Event) -> None:
        call_on_loop(loop, bus.publish, event)

    relay.attach(hand_over)
    return relay


class BlockingCalls:
    """Where blocking calls (the engine's, above all) run off the loop, so that none can keep
    another waiting for a thread: short calls share a bounded pool of their own, and each
    long-lived one (a wait for an exit, an output stream, a stop with its grace) gets a thread
    of its own for as long as it blocks. The loop's default executor, which every
    `asyncio.to_thread` shares, is left to short file and database work: a few sessions'
    waits and streams filled it once, and then no session could start or end."""

    def __init__(self, workers: int = 16, name: str = "engine") -> None:
        self._name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)

    def call(self, function: Callable[[Unpack[_Args]], _T], *args: *_Args) -> asyncio.Future[_T]:
        """A short call in the bounded pool. Cancelled before a thread takes it, it never
        runs (a launch whose caller left does not start later)."""
        return asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def hold(self, function: Callable[[Unpack[_Args]], _T], *args: *_Args) -> asyncio.Future[_T]:
        """A call that may block for as long as a session lives, in a thread of its own.
        Cancelling the future lets the loop go on; the thread ends when the call returns."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def work() -> None:
            try:
                result = function(*args)
            except BaseException as e:  # noqa: BLE001 - raised again in the awaiting task
                call_on_loop(loop, _settle_error, future, e)
            else:
                call_on_loop(loop, _settle, future, result)

        name = f"{self._name}-{getattr(function, '__name__', 'call')}"
        threading.Thread(target=work, name=name, daemon=True).start()
        return future

    def close(self) -> None:
        """Drops the queued short calls; those running finish in their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
