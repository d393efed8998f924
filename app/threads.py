"""The one way from a worker thread back to the event loop: `call_on_loop`, a guarded
`loop.call_soon_threadsafe`. Everything a thread has for the loop (output pieces, file
activity, events) goes through it; objects of the loop (the event bus, futures, tasks) are
touched only on the loop's thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVarTuple, Unpack

from app.events import Event, EventBus

_Args = TypeVarTuple("_Args")


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[Unpack[_Args]], object],
                 *args: *_Args) -> bool:
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
