"""Routes as model APIs use them, on real sockets: server-sent events streamed as they come,
a per-route idle timeout for slow models, WebSocket upgrades with the credential added."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from app.egress.proxy import ProxySettings
from app.profiles import Profile, parse_profile
from tests.app.egress.test_egress_proxy import harness
from tests.netsupport import DictSecrets, RawServer

KEY = "sk-proj-" + "x7Q-" * 39  # 164 characters, the length of an OpenAI project key


def route_profile(port: int, route: str = "") -> Profile:
    return parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\n[[network.routes]]\n'
        f'name = "openai"\nupstream = "http://127.0.0.1:{port}/v1"\nsecret = "openai"\n{route}',
        "t.toml")


class EventStream(RawServer):
    """An upstream streaming `count` server-sent events `interval` seconds apart, chunked,
    noting when each was sent."""

    def __init__(self, count: int = 4, interval: float = 1.0) -> None:
        super().__init__()
        self.count, self.interval = count, interval
        self.sent: list[float] = []
        self.authorization = b""

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        self.authorization = next((line.split(b":", 1)[1].strip() for line in
                                   head.split(b"\r\n") if line.lower().startswith(
                                       b"authorization:")), b"")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for n in range(self.count):
            if n:
                time.sleep(self.interval)
            event = (b'event: response.output_text.delta\ndata: {"type": '
                     b'"response.output_text.delta", "n": %d, "delta": "Hel"}\n\n' % n)
            self.sent.append(time.monotonic())
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        conn.sendall(b"0\r\n\r\n")


def arrivals(port: int, path: str, count: int) -> list[float]:
    """When each event `"n": i` reached the agent's side."""
    seen: list[float] = []
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        while len(seen) < count:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
            now = time.monotonic()
            while b'"n": %d' % len(seen) in got:
                seen.append(now)
    return seen


def test_each_server_sent_event_reaches_the_agent_as_the_upstream_sends_it(
    tmp_path: Path
) -> None:
    with EventStream(count=4, interval=1.0) as upstream, harness(
        tmp_path, route_profile(upstream.port), secrets=DictSecrets({"openai": KEY})
    ) as proxy:
        seen = arrivals(proxy.port, "/routes/openai/responses", 4)
    assert upstream.authorization == f"Bearer {KEY}".encode()
    lags = [arrived - sent for arrived, sent in zip(seen, upstream.sent, strict=True)]
    # Held back for the next event, each would come a whole interval (1 s) late.
    assert max(lags) < 0.5, lags


class SlowAnswer(RawServer):
    """An upstream that thinks for `delay` seconds before it answers."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        time.sleep(self.delay)
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nthought")


def status_of(port: int, target: str) -> tuple[int, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = sock.recv(65536)
    return int(head.split(b" ")[1]), time.monotonic() - started


def test_a_route_waits_for_a_slow_model_past_the_proxys_fixed_timeout(tmp_path: Path) -> None:
    settings = ProxySettings(body_timeout=0.5)
    with SlowAnswer(delay=1.5) as upstream, harness(
        tmp_path, route_profile(upstream.port), secrets=DictSecrets({"openai": KEY}),
        settings=settings,
    ) as proxy:
        assert status_of(proxy.port, "/routes/openai/responses")[0] == 200


def test_a_route_answers_504_after_its_own_idle_timeout(tmp_path: Path) -> None:
    with SlowAnswer(delay=5) as upstream, harness(
        tmp_path, route_profile(upstream.port, 'idle_timeout = "1s"\n'),
        secrets=DictSecrets({"openai": KEY}),
    ) as proxy:
        status, took = status_of(proxy.port, "/routes/openai/responses")
        events = proxy.wait_events(1)
    assert status == 504 and 0.9 < took < 3
    assert events[0].details["reason"] == "the upstream was silent for 1 s"
