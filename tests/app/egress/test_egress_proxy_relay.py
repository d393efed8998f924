"""The proxy's raw relay (splice) for large response bodies and CONNECT tunnels, against real
upstreams: every byte arrives exactly once and in order, either side
hanging up mid-body ends only that exchange, keep-alive goes on after a spliced body, and
the tunnel's upload threshold and the bandwidth limit still hold."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app.egress.splice as splice_module
from app.consent import Verdict
from app.egress.proxy import ProxySettings
from app.profiles import parse_profile
from tests.app.egress.test_egress_proxy import harness, profile
from tests.netsupport import (
    EchoServer,
    ProxyHarness,
    RecordingServer,
    ScriptedFrontEnd,
    pattern,
    pattern_pieces,
    wait_until,
)

MIB = 1024 * 1024


def proxy_connection(proxy: ProxyHarness) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)


@pytest.fixture
def upstream() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def relay_harness(tmp_path: Path, port: int, splice: bool = True, **kwargs: Any) -> ProxyHarness:
    settings = ProxySettings(body_timeout=5, splice=splice, splice_min=MIB)
    return harness(tmp_path, profile(port, **kwargs), settings=settings)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern_sha(size: int) -> str:
    """sha(pattern(size)) without building it (which holds the GIL the proxy's loop needs)."""
    digest = hashlib.sha256()
    for piece in pattern_pieces(size, MIB):
        digest.update(piece)
    return digest.hexdigest()


@pytest.mark.parametrize("splice", [True, False], ids=["spliced", "h11"])
def test_bodies_arrive_exactly_and_keep_alive_goes_on(
    tmp_path: Path, upstream: RecordingServer, splice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipes: list[object] = []

    class CountedPipe(splice_module.SplicePipe):
        def __init__(self, source: int, sink: int) -> None:
            super().__init__(source, sink)
            pipes.append(self)

    monkeypatch.setattr(splice_module, "SplicePipe", CountedPipe)
    sizes = [MIB - 1, MIB, 3 * MIB + 5, 64 * MIB + 17, 10]
    with relay_harness(tmp_path, upstream.port, splice) as proxy:
        conn = proxy_connection(proxy)
        for size in sizes:
            conn.request("GET", f"http://files.test:{upstream.port}/pattern/{size}")
            response = conn.getresponse()
            assert response.status == 200
            body = response.read()
            assert len(body) == size and sha(body) == pattern_sha(size), size
        conn.close()
        events = proxy.wait_events(len(sizes))
    assert upstream.seen.connections >= 1
    assert [e.details["bytes_down"] for e in events] == sizes
    assert {e.kind for e in events} == {"net.request"}
    # What is left of a body once its head is in is spliced from splice_min on: the two big
    # ones, and the 1 MiB one unless some of it came with the head.
    assert len(pipes) in ((2, 3) if splice else (0,))


def test_an_upstream_hanging_up_mid_body_cuts_only_that_response(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    with relay_harness(tmp_path, upstream.port) as proxy:
        conn = proxy_connection(proxy)
        conn.request("GET", f"http://files.test:{upstream.port}/cut/{8 * MIB}")
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert len(cut.value.partial) == 4 * MIB
        assert cut.value.partial == pattern(4 * MIB)
        conn.close()
        again = proxy_connection(proxy)
        again.request("GET", f"http://files.test:{upstream.port}/pattern/{2 * MIB}")
        assert again.getresponse().read() == pattern(2 * MIB)
        again.close()
        assert wait_until(lambda: proxy.proxy._connections.open == 0)


def test_a_client_hanging_up_mid_body_ends_only_its_exchange(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    with relay_harness(tmp_path, upstream.port) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(
            f"GET http://files.test:{upstream.port}/pattern/{256 * MIB} HTTP/1.1\r\n"
            f"Host: files.test:{upstream.port}\r\n\r\n".encode()
        )
        got = 0
        while got < 2 * MIB:
            got += len(sock.recv(MIB))
        sock.close()
        assert wait_until(lambda: proxy.proxy._connections.open == 0 and not proxy.proxy._clients)
        conn = proxy_connection(proxy)
        conn.request("GET", f"http://files.test:{upstream.port}/pattern/{3 * MIB}")
        assert conn.getresponse().read() == pattern(3 * MIB)
        conn.close()


def open_tunnel(proxy: ProxyHarness, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(f"CONNECT files.test:{port} HTTP/1.1\r\nHost: files.test:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def test_a_tunnel_moves_every_byte_both_ways(tmp_path: Path) -> None:
    data = pattern(16 * MIB + 3)
    with EchoServer() as echo, relay_harness(tmp_path, echo.port, uploads="never") as proxy:
        sock = open_tunnel(proxy, echo.port)
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        back = bytearray()
        while len(back) < len(data):
            chunk = sock.recv(MIB)
            assert chunk
            back += chunk
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # the upstream's end came through as the agent's EOF
        sock.close()
        events = proxy.wait_events(1)
    assert sha(bytes(back)) == sha(data) and sha(bytes(echo.received)) == sha(data)
    assert events[0].kind == "net.tunnel"
    assert events[0].details["bytes_up"] == events[0].details["bytes_down"] == len(data)


@pytest.mark.parametrize("verdict", [Verdict.DENY, Verdict.ALLOW])
def test_a_spliced_tunnel_still_pauses_past_the_upload_threshold(
    tmp_path: Path, verdict: Verdict
) -> None:
    front = ScriptedFrontEnd(verdict)
    with (
        EchoServer() as echo,
        harness(
            tmp_path,
            profile(echo.port, threshold="1k"),
            front_end=front,
            settings=ProxySettings(splice=True),
        ) as proxy,
    ):
        sock = open_tunnel(proxy, echo.port)
        sock.sendall(b"a" * 500)
        assert sock.recv(500) == b"a" * 500  # under the threshold: through, nothing asked
        assert not front.asked
        sock.sendall(b"b" * 5000)
        received = b""
        with contextlib.suppress(ConnectionResetError):  # a refusal may close with RST
            while len(received) < 5000 and (chunk := sock.recv(5000)):
                received += chunk
        sock.close()
        events = proxy.wait_events(1)
    assert front.asked and front.asked[0].details["tunnel"] is True
    assert 1024 < front.asked[0].details["size"] <= 5500
    if verdict is Verdict.DENY:
        assert bytes(echo.received) == b"a" * 500  # the withheld bytes never left
        assert received == b""
        assert events[0].kind == "net.refused" and events[0].details["rule"] == "upload-refused"
    else:
        assert bytes(echo.received) == b"a" * 500 + b"b" * 5000 and received == b"b" * 5000


def test_the_bandwidth_limit_holds_for_spliced_bodies(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    with relay_harness(tmp_path, upstream.port, network='bandwidth = "4m"') as proxy:
        conn = proxy_connection(proxy)
        started = time.monotonic()
        conn.request("GET", f"http://files.test:{upstream.port}/pattern/{12 * MIB}")
        body = conn.getresponse().read()
        elapsed = time.monotonic() - started
        conn.close()
    assert body == pattern(12 * MIB)
    # 12 MiB at 4 MB/s with a quarter second of burst: about 3 s; unlimited, a few ms.
    assert elapsed >= 2.5, elapsed


@pytest.mark.parametrize("splice", [True, False], ids=["spliced", "h11"])
def test_cutting_ends_open_tunnels_and_downloads_at_once(
    tmp_path: Path, upstream: RecordingServer, splice: bool
) -> None:
    """ "Block all network" while a tunnel is open and a download is under way: both end
    now, nothing more reaches the upstream, and each is logged as refused."""
    switch = {"on": False}
    with (
        EchoServer() as echo,
        harness(
            tmp_path,
            parse_profile(
                'name = "t"\nimage = "i"\n[network]\nallow_private = true\n'
                f'allow = ["files.test:{upstream.port}", "files.test:{echo.port}"]\n'
                '[approval]\nuploads = "never"\n',
                "t.toml",
            ),
            settings=ProxySettings(body_timeout=5, splice=splice, splice_min=MIB),
            blocked=lambda: switch["on"],
        ) as proxy,
    ):
        tunnel = open_tunnel(proxy, echo.port)
        tunnel.sendall(b"before")
        assert tunnel.recv(6) == b"before"
        download = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        download.sendall(
            f"GET http://files.test:{upstream.port}/pattern/{512 * MIB} HTTP/1.1"
            f"\r\nHost: files.test:{upstream.port}\r\n\r\n".encode()
        )
        assert download.recv(MIB)
        switch["on"] = True
        proxy.loop.call_soon_threadsafe(proxy.proxy.cut)
        assert wait_until(lambda: not proxy.proxy._clients)
        tunnel.settimeout(10)
        assert tunnel.recv(100) == b""  # closed by the proxy
        with contextlib.suppress(OSError):
            tunnel.sendall(b"after")
        got = 0
        with contextlib.suppress(OSError):
            while chunk := download.recv(MIB):
                got += len(chunk)
        assert got < 512 * MIB
        tunnel.close()
        download.close()
        refused = [e for e in proxy.wait_events(2) if e.kind == "net.refused"]
    assert bytes(echo.received) == b"before"
    assert {e.details["rule"] for e in refused} == {"blocked-all"}
    assert {e.subject for e in refused} == {
        f"files.test:{echo.port}",
        f"files.test:{upstream.port}",
    }
    assert all(e.details["reason"].startswith("cut:") for e in refused)


@pytest.mark.parametrize("splice", [True, False], ids=["spliced", "h11"])
def test_uploads_always_asks_before_the_first_byte_goes_up_a_tunnel(
    tmp_path: Path, splice: bool
) -> None:
    front = ScriptedFrontEnd(Verdict.DENY)
    with (
        EchoServer() as echo,
        harness(
            tmp_path,
            profile(echo.port, uploads="always"),
            front_end=front,
            settings=ProxySettings(splice=splice),
        ) as proxy,
    ):
        sock = open_tunnel(proxy, echo.port)
        sock.sendall(b"tiny")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
        sock.close()
        events = proxy.wait_events(1)
    assert [q.details["size"] for q in front.asked] == [4]
    assert front.asked[0].details["tunnel"] is True
    assert bytes(echo.received) == b""
    assert events[0].details["rule"] == "upload-refused"
