"""asyncio helpers that the egress modules which touch sockets share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


async def within(awaitable: Awaitable[_T], seconds: float | None) -> _T:
    """`asyncio.wait_for`, minus its Python 3.11 flaw: a cancellation that arrives as the
    awaited thing completes is swallowed there, and `SessionProxy.cut` would not cut."""
    async with asyncio.timeout(seconds):
        return await awaitable


def take_buffered(reader: asyncio.StreamReader) -> bytes:
    """What the stream holds already, taken without waiting for more: asyncio has no public
    call for that, so this reads its buffer (a bytearray in every CPython 3.x)."""
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009
    data = bytes(buffer)
    buffer.clear()
    return data


async def flushed(writer: asyncio.StreamWriter) -> None:
    """Until the transport's write buffer is empty (`drain` only waits for it to be low)."""
    transport = writer.transport
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)
