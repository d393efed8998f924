"""Moving bytes between two sockets in the kernel with splice(2), for tunnels and large
response bodies: Python only counts what the kernel moves."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Awaitable, Callable

from app.egress.aio import Turns, flushed, take_buffered, within

PIPE_SIZE = 1024 * 1024  # what one splice moves at most (Linux's default pipe-max-size)


def spliceable(*writers: asyncio.StreamWriter) -> bool:
    """Whether splice(2) can move bytes between these streams: plain sockets, no TLS."""
    return hasattr(os, "splice") and all(
        w.get_extra_info("ssl_object") is None
        and w.get_extra_info("socket") is not None
        and isinstance(w.transport, asyncio.ReadTransport)
        for w in writers
    )


async def splice(
    source: asyncio.StreamReader,
    source_writer: asyncio.StreamWriter,
    sink: asyncio.StreamWriter,
    length: int | None,
    timeout: float | None,
    admit: Callable[[int], Awaitable[None]],
    first: bytes = b"",
) -> int:
    """Moves `length` bytes (None: up to the source's end) from the source's socket to
    the sink's, `first` and what the source's stream buffered before them. `admit(n)`
    runs before n bytes go out (bandwidth, counters, approval). Returns how many moved:
    fewer than `length` means the source ended early. A silence of `timeout` seconds
    from the source ends the relay the same way.

    Socket → pipe → socket with splice(2): the kernel moves the pages and Python only
    counts, where a copy through Python ran at a quarter of loopback speed. The sockets
    belong to asyncio transports, which refuse a second reader or writer on their fds:
    the source's transport is paused, the sink's write buffer emptied, and the relay
    waits on duplicates of the two descriptors."""
    transport = source_writer.transport
    assert isinstance(transport, asyncio.ReadTransport)  # `spliceable` checked
    transport.pause_reading()
    data = first + take_buffered(source)
    if length is not None:
        data = data[:length]  # bytes past a declared length are not the agent's to get
    moved = 0
    if data:
        await admit(len(data))
        sink.write(data)
        moved = len(data)
    await flushed(sink)
    sink_socket = sink.get_extra_info("socket")
    if sink_socket.family == socket.AF_UNIX:
        # The default unix socket buffer (~200 KiB) would cut each splice in five. (TCP
        # sizes its own buffers; a fixed size would switch that off.)
        with contextlib.suppress(OSError):
            sink_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * PIPE_SIZE)
    pipe = SplicePipe(
        source_writer.get_extra_info("socket").fileno(), sink.get_extra_info("socket").fileno()
    )
    turns = Turns()
    try:
        while length is None or moved < length:
            await turns.take()
            want = PIPE_SIZE if length is None else min(PIPE_SIZE, length - moved)
            try:
                amount = await pipe.fill(want, timeout)
            except TimeoutError:
                break
            if not amount:
                break
            await admit(amount)
            await pipe.empty(amount)
            moved += amount
    finally:
        pipe.close()
    return moved


class SplicePipe:
    """A pipe between two sockets for splice(2), waiting on duplicates of their descriptors
    (see `splice`). Non-blocking throughout: the loop never waits in a call."""

    def __init__(self, source: int, sink: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds: list[int] = []
        try:
            self._source = self._keep(os.dup(source))
            self._sink = self._keep(os.dup(sink))
            self._out, self._in = (self._keep(fd) for fd in os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
            with contextlib.suppress(OSError):  # a smaller pipe only means more calls
                fcntl.fcntl(self._in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    async def fill(self, most: int, timeout: float | None) -> int:
        """Moves up to `most` bytes from the source into the (empty) pipe; 0 at the end."""
        while True:
            try:
                return os.splice(
                    self._source, self._in, most, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
                )
            except BlockingIOError:
                await self._ready(self._source, False, timeout)

    async def empty(self, amount: int) -> None:
        """Moves `amount` bytes from the pipe to the sink."""
        while amount:
            try:
                amount -= os.splice(
                    self._out, self._sink, amount, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
                )
            except BlockingIOError:
                await self._ready(self._sink, True, None)

    async def _ready(self, fd: int, write: bool, timeout: float | None) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if write:
            self._loop.add_writer(fd, wake)
        else:
            self._loop.add_reader(fd, wake)
        try:
            await within(ready, timeout)
        finally:
            if write:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
