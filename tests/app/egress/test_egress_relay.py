"""The sidecar's relay (`profiles/agents/airlock_relay.py`) as the process it is, on loopback,
against a real unix-socket upstream: every byte arrives exactly once both ways, an end of
input is passed on as a half-close, many connections run at once, either side vanishing
ends only its own connection, and one connection over the cap gets a 503 that says why.
In the sidecar itself (after the witness's privilege drop, under the profile's seccomp
filter) it carries every proxy test of tests/ui/test_egress_escapes.py."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.egress.bridge import RELAY, relay_command
from app.image import AGENTS_IN_IMAGE, shipped_agents
from tests.netsupport import pattern, wait_until
from tests.support import REPO

SCRIPT = REPO / "profiles" / "agents" / "airlock_relay.py"
MIB = 1024 * 1024

Handler = Callable[[socket.socket], None]


class Upstream:
    """A unix-socket server standing in for the proxy: each connection goes to `handler` in
    a thread of its own; `connections` counts them."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(512)
        self.handler = handler
        self.connections = 0
        self.ended = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn, contextlib.suppress(OSError):
                self.handler(conn)
        finally:
            with self._lock:
                self.ended += 1

    def close(self) -> None:
        self.server.close()


class Relay:
    def __init__(self, process: subprocess.Popen[bytes], port: int, upstream: Path) -> None:
        self.process, self.port, self.upstream = process, port, upstream

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock

    def alive(self) -> bool:
        return self.process.poll() is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """As the bridge checks it: a LISTEN entry for 127.0.0.1:port in the TCP table."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines)


@contextlib.contextmanager
def running_relay(tmp_path: Path, *extra: str) -> Iterator[Relay]:
    port, path = free_port(), tmp_path / "proxy.sock"
    argv = relay_command(str(SCRIPT), port, str(path))
    process = subprocess.Popen([sys.executable, *argv[1:], *extra], stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: listening(port) or process.poll() is not None)
        assert process.poll() is None, process.communicate()[1]
        yield Relay(process, port, path)
        assert process.poll() is None, "the relay died"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def relay_to(tmp_path: Path, handler: Handler, *extra: str) -> Iterator[tuple[Relay, Upstream]]:
    with running_relay(tmp_path, *extra) as relay:
        upstream = Upstream(relay.upstream, handler)
        try:
            yield relay, upstream
        finally:
            upstream.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(MIB):
        conn.sendall(data)


def receive_all(sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := sock.recv(MIB):
        got += chunk
    return bytes(got)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_relay_ships_where_the_bridge_runs_it() -> None:
    assert "airlock_relay.py" in {a.name for a in shipped_agents()}
    assert f"{AGENTS_IN_IMAGE}/airlock_relay.py" == RELAY
    assert relay_command()[:4] == ["python3", "-I", "-S", RELAY]


def test_every_byte_arrives_once_and_in_order_both_ways(tmp_path: Path) -> None:
    data = pattern(96 * MIB + 7)
    with relay_to(tmp_path, echo) as (relay, _):
        sock = relay.connect()
        sender = threading.Thread(target=lambda: (sock.sendall(data),
                                                  sock.shutdown(socket.SHUT_WR)))
        sender.start()
        back = receive_all(sock)  # the upstream's end came through as EOF
        sender.join()
        sock.close()
    assert len(back) == len(data) and sha(back) == sha(data)


def test_a_large_download_then_the_upstreams_end(tmp_path: Path) -> None:
    size = 300 * MIB + 3

    def download(conn: socket.socket) -> None:
        assert conn.recv(100) == b"GET"
        conn.sendall(pattern(size))

    with relay_to(tmp_path, download) as (relay, _), relay.connect() as sock:
        sock.sendall(b"GET")
        body = receive_all(sock)
    assert len(body) == size and sha(body) == sha(pattern(size))


def test_the_clients_half_close_reaches_the_upstream_which_still_answers(
    tmp_path: Path
) -> None:
    def answer_after_eof(conn: socket.socket) -> None:
        request = receive_all(conn)  # up to the client's half-close
        conn.sendall(b"got %d bytes" % len(request))

    with relay_to(tmp_path, answer_after_eof) as (relay, _), relay.connect() as sock:
        sock.sendall(b"x" * 5 * MIB)
        sock.shutdown(socket.SHUT_WR)
        assert receive_all(sock) == b"got %d bytes" % (5 * MIB)


def test_the_upstreams_half_close_reaches_the_client_which_still_sends(
    tmp_path: Path
) -> None:
    received: list[bytes] = []

    def greet_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        received.append(receive_all(conn))

    with relay_to(tmp_path, greet_then_listen) as (relay, _), relay.connect() as sock:
        assert receive_all(sock) == b"hello"  # EOF: the upstream is done sending
        sock.sendall(b"y" * 3 * MIB)  # ... but still listens
        sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: bool(received))
    assert received == [b"y" * 3 * MIB]


def test_many_connections_at_once(tmp_path: Path) -> None:
    count = 200
    results: dict[int, bool] = {}

    def client(i: int) -> None:
        data = struct.pack("!I", i) * (64 * 1024 + i)
        with relay.connect() as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            results[i] = receive_all(sock) == data

    with relay_to(tmp_path, echo) as (relay, upstream):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert wait_until(lambda: upstream.ended == count)
    assert len(results) == count and all(results.values())


def test_a_client_vanishing_mid_transfer_ends_only_its_connection(tmp_path: Path) -> None:
    def endless(conn: socket.socket) -> None:
        if (first := conn.recv(100)) == b"GET":
            block = pattern(MIB)
            while True:
                conn.sendall(block)
        conn.sendall(first)
        echo(conn)

    with relay_to(tmp_path, endless) as (relay, upstream):
        for linger in (False, True):
            sock = relay.connect()
            sock.sendall(b"GET")
            got = 0
            while got < 4 * MIB:
                got += len(sock.recv(MIB))
            if linger:  # close with a reset rather than a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        assert wait_until(lambda: upstream.ended == 2)  # the upstream saw both go
        with relay.connect() as sock:
            sock.sendall(b"still there?")
            assert sock.recv(100) == b"still there?"


def test_an_upstream_vanishing_mid_transfer_cuts_only_that_connection(
    tmp_path: Path
) -> None:
    def cut(conn: socket.socket) -> None:
        if (first := conn.recv(100)) == b"GET":
            conn.sendall(pattern(3 * MIB))  # then the with-block closes it: gone
            return
        conn.sendall(first)
        echo(conn)

    with relay_to(tmp_path, cut) as (relay, _):
        with relay.connect() as sock:
            sock.sendall(b"GET")
            assert receive_all(sock) == pattern(3 * MIB)
        with relay.connect() as sock:
            sock.sendall(b"next")
            assert sock.recv(100) == b"next"


def test_one_connection_over_the_cap_is_refused_with_a_reason(tmp_path: Path) -> None:
    with relay_to(tmp_path, echo, "--max-connections", "3") as (relay, upstream):
        held = [relay.connect() for _ in range(3)]
        for sock in held:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
        with relay.connect() as extra:
            extra.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
            answer = receive_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"X-Airlock-Rule: relay-limit" in answer
        assert b"too many connections" in answer
        assert upstream.connections == 3  # the refused one never reached the proxy
        held.pop().close()
        assert wait_until(lambda: upstream.ended == 1)
        with relay.connect() as sock:
            sock.sendall(b"room again")
            assert sock.recv(100) == b"room again"
        for sock in held:
            sock.close()


def test_no_proxy_behind_the_relay_is_a_502(tmp_path: Path) -> None:
    with running_relay(tmp_path) as relay, relay.connect() as sock:
        sock.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        answer = receive_all(sock)
    assert answer.startswith(b"HTTP/1.1 502 ") and b"relay-upstream" in answer


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 70000, b"\xff\r\n\r\n" * 1000])
def test_whatever_a_client_sends_the_relay_stays_up(tmp_path: Path, garbage: bytes) -> None:
    with relay_to(tmp_path, echo) as (relay, _):
        for _ in range(20):
            sock = relay.connect()
            with contextlib.suppress(OSError):
                sock.sendall(garbage)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        with relay.connect() as sock:
            sock.sendall(b"ok")
            assert sock.recv(10) == b"ok"
        assert relay.alive()
