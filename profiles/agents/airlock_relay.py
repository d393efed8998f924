"""Airlock's proxy relay, run in the egress sidecar: accepts the agent's connections on
127.0.0.1:3128 and joins each to the session's proxy on its unix socket, moving the bytes
with splice(2) so that they never pass through Python.

Not an agent: the witness (airlock_netlog.py) starts it after dropping to the session's uid,
with no capability left (see app/egress/bridge.py). Standard library only; it runs on the
image's python3. It took the place of `socat`, which copies every byte through user space
with a buffer per connection: a quarter to half of loopback speed, where this runs at the
proxy's own.

Each connection has a thread of its own that waits on its two sockets with poll(2) and moves
what is ready through one pipe per direction: socket → pipe → socket, pages handed on in the
kernel. An end of input is passed on as shutdown(SHUT_WR) once the pipe is empty; an error
or a reset on either side ends that connection only. Memory is bounded: at most
`--max-connections` connections, each a thread, two sockets and two pipes (of which at most
`BIG_PIPES` grow to 1 MiB); one more is answered with an HTTP 503 that says why (every client
of this port speaks HTTP to a proxy), and nothing the agent sends can take the relay down for
its other connections.

Usage: airlock_relay.py --listen HOST:PORT --upstream SOCKET [--max-connections N]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import resource
import select
import socket
import sys
import threading
import time

BACKLOG = 256
MAX_CONNECTIONS = 256  # as many as the proxy serves at once (ProxySettings.max_clients)
# A pipe per direction starts at Linux's default (64 KiB) and grows to BIG_PIPE once a splice
# fills it: a bulk transfer, which then moves a megabyte per call (+30 % throughput in
# tests/bench/bench_proxy.py). At most BIG_PIPES at once: Linux counts pipe capacity against a
# per-user limit (16 MiB of the 64 MiB soft limit here) shared with every other process of
# the session's user on the host, whose new pipes it would otherwise shrink.
BIG_PIPE = 1024 * 1024
BIG_PIPES = 16
FDS_PER_CONNECTION = 6  # two sockets, two pipes
CONNECT_TIMEOUT = 10.0
REFUSAL_TIMEOUT = 1.0  # how long a refused client may take to read why
MAX_REFUSED = 64  # refused connections lingering at once to read their answer; then closed
STACK_SIZE = 256 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
ROUNDS = 16  # splices per direction before the other direction gets its turn

IN, OUT = select.POLLIN, select.POLLOUT
FAILED = select.POLLERR | select.POLLNVAL
GONE = select.POLLHUP | FAILED


def refusal(status: int, rule: str, reason: str) -> bytes:
    """A complete HTTP response, shaped like the proxy's own refusals
    (app/egress/requests.py: refusal_response)."""
    body = f"airlock: refused ({rule}): {reason}\n".encode("ascii")
    phrase = {502: "Bad Gateway", 503: "Service Unavailable"}[status]
    return (f"HTTP/1.1 {status} {phrase}\r\nX-Airlock-Refused: {reason}\r\n"
            f"X-Airlock-Rule: {rule}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii") + body


TOO_MANY = refusal(503, "relay-limit", "too many connections from the agent")
NO_PROXY = refusal(502, "relay-upstream", "the proxy is not reachable")


class PipeBudget:
    """How many pipes may be BIG_PIPE at once, across connections."""

    def __init__(self, size: int) -> None:
        self._left = threading.Semaphore(size)

    def take(self) -> bool:
        return self._left.acquire(blocking=False)

    def give(self) -> None:
        self._left.release()


class Flow:
    """One direction of a connection: source socket → pipe → sink socket."""

    __slots__ = ("big", "budget", "capacity", "done", "eof", "pending", "pipe_in", "pipe_out",
                 "sink", "source")

    def __init__(self, source: socket.socket, sink: socket.socket, budget: PipeBudget) -> None:
        self.source, self.sink, self.budget = source, sink, budget
        self.pipe_out, self.pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.capacity = fcntl.fcntl(self.pipe_in, fcntl.F_GETPIPE_SZ)
        self.big = False
        self.pending = 0  # bytes in the pipe
        self.eof = False  # the source ended
        self.done = False  # ... and the sink was told, after everything before it

    def move(self) -> None:
        """Moves what can be moved without waiting; raises OSError when the connection is
        broken (a reset, a sink that went away)."""
        for _ in range(ROUNDS):
            if self.pending:
                try:
                    self.pending -= os.splice(self.pipe_out, self.sink.fileno(), self.pending,
                                              flags=SPLICE_FLAGS)
                except BlockingIOError:
                    return
                if self.pending:
                    continue
            if self.eof:
                if not self.done:
                    self.done = True
                    self.sink.shutdown(socket.SHUT_WR)
                return
            try:
                moved = os.splice(self.source.fileno(), self.pipe_in, self.capacity,
                                  flags=SPLICE_FLAGS)
            except BlockingIOError:
                return
            if moved == self.capacity and not self.big:
                self._grow()
            if moved:
                self.pending = moved
            else:
                self.eof = True

    def wants(self) -> tuple[socket.socket, int]:
        """What to wait for: the sink writable while the pipe holds bytes, else input."""
        if self.pending:
            return self.sink, OUT
        return self.source, 0 if self.eof else IN

    def _grow(self) -> None:
        if not self.budget.take():
            return
        try:
            self.capacity = fcntl.fcntl(self.pipe_in, fcntl.F_SETPIPE_SZ, BIG_PIPE)
        except OSError:  # over the user's limit: the pipe stays as it was
            self.budget.give()
            return
        self.big = True

    def close(self) -> None:
        for fd in (self.pipe_in, self.pipe_out):
            os.close(fd)
        if self.big:
            self.big = False
            self.budget.give()


def relay(client: socket.socket, upstream: socket.socket, budget: PipeBudget) -> None:
    """Moves bytes both ways until both directions ended, or either side broke."""
    up = Flow(client, upstream, budget)
    try:
        down = Flow(upstream, client, budget)
    except OSError:
        up.close()
        raise
    try:
        for sock in (client, upstream):
            sock.setblocking(False)
        poller = select.poll()
        while not (up.done and down.done):
            up.move()
            down.move()
            if up.done and down.done:
                return
            masks = {client.fileno(): 0, upstream.fileno(): 0}
            for flow in (up, down):
                sock, mask = flow.wants()
                masks[sock.fileno()] |= mask
            for flow in (up, down):
                # A socket nobody waits on is watched only once its input ended: then a
                # hang-up (both ways closed) or an error on it ends the connection. Before
                # that, its input will tell, and watching it would spin while it waits.
                if flow.done and not masks[flow.source.fileno()]:
                    masks[flow.source.fileno()] = select.POLLHUP
            for fd, mask in masks.items():
                if mask:
                    poller.register(fd, mask)
                else:
                    with contextlib.suppress(KeyError):
                        poller.unregister(fd)
            for fd, event in poller.poll():
                if event & FAILED:
                    return  # a reset: nothing more can go either way
                if event & select.POLLHUP and not masks[fd] & (IN | OUT):
                    return  # closed both ways, after its input was passed on
    finally:
        up.close()
        down.close()


class Relay:
    """The listener and its connections."""

    def __init__(self, listen: tuple[str, int], upstream: str, limit: int) -> None:
        self.upstream = upstream
        self.limit = limit
        self.active = 0
        self.budget = PipeBudget(BIG_PIPES)
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener.bind(listen)
        self.listener.listen(BACKLOG)
        self.listener.setblocking(False)
        self.refused: dict[int, tuple[socket.socket, float]] = {}  # fd -> (socket, deadline)

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.listener, IN)
        while True:
            events = poller.poll(int(REFUSAL_TIMEOUT * 1000) if self.refused else None)
            for fd, _ in events:
                if fd == self.listener.fileno():
                    self._accept(poller)
                else:
                    self._drain(poller, fd)
            now = time.monotonic()
            for fd, (_, deadline) in list(self.refused.items()):
                if now > deadline:
                    self._forget(poller, fd)

    def _accept(self, poller: select.poll) -> None:
        for _ in range(64):  # a batch, then the refused ones get their turn
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # out of descriptors or memory: the backlog waits
                print(f"airlock_relay: accept: {e}", file=sys.stderr, flush=True)
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.05)
                return
            with self.lock:
                admitted = self.active < self.limit
                self.active += admitted
            if not admitted:
                self._refuse(poller, conn)
                continue
            try:
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()
            except RuntimeError:  # no thread to be had (the pids limit): as if over the cap
                self._release()
                self._refuse(poller, conn)

    def _refuse(self, poller: select.poll, conn: socket.socket) -> None:
        """Answers 503 and lets the client read it: closing with its request unread would
        reset the connection and could destroy the answer before the client saw it."""
        try:
            conn.setblocking(False)
            conn.send(TOO_MANY)  # far smaller than a fresh socket's buffer
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if len(self.refused) >= MAX_REFUSED:
            conn.close()
            return
        self.refused[conn.fileno()] = (conn, time.monotonic() + REFUSAL_TIMEOUT)
        poller.register(conn, IN)

    def _drain(self, poller: select.poll, fd: int) -> None:
        conn, _ = self.refused[fd]
        try:
            if conn.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._forget(poller, fd)

    def _forget(self, poller: select.poll, fd: int) -> None:
        conn, _ = self.refused.pop(fd)
        poller.unregister(fd)
        conn.close()

    def _release(self) -> None:
        with self.lock:
            self.active -= 1

    def _connection(self, client: socket.socket) -> None:
        try:
            with client:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                    try:
                        upstream.settimeout(CONNECT_TIMEOUT)
                        upstream.connect(self.upstream)
                    except OSError:
                        answer(client, NO_PROXY)
                        return
                    with contextlib.suppress(OSError):
                        relay(client, upstream, self.budget)
        finally:
            self._release()


def answer(client: socket.socket, response: bytes) -> None:
    """Sends `response` and ends the connection so that the client can read it: closing
    with its request unread would reset the connection and could destroy the answer."""
    deadline = time.monotonic() + REFUSAL_TIMEOUT
    with contextlib.suppress(OSError):
        client.settimeout(REFUSAL_TIMEOUT)
        client.sendall(response)
        client.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            if not client.recv(65536):
                return


def allowed_connections(wanted: int) -> int:
    """`wanted`, or fewer if the descriptor limit cannot hold that many (raised first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted * FDS_PER_CONNECTION + MAX_REFUSED + 16
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, (soft - MAX_REFUSED - 16) // FDS_PER_CONNECTION))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="airlock_relay")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="the proxy's unix socket")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    options = parser.parse_args(argv)
    host, _, port = options.listen.rpartition(":")
    threading.stack_size(STACK_SIZE)
    limit = allowed_connections(max(1, options.max_connections))
    Relay((host, int(port)), options.upstream, limit).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
