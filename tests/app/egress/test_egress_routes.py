"""Routes as model APIs use them, on real sockets: server-sent events streamed as they come,
a per-route idle timeout for slow models, WebSocket upgrades with the credential added."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import time
from pathlib import Path

from app.audit import AuditLog, records
from app.consent import Verdict
from app.egress.proxy import ProxySettings
from app.events import EventKind
from app.profiles import Profile, parse_profile
from tests.app.egress.test_egress_proxy import harness, profile
from tests.netsupport import (
    DictSecrets,
    ProxyHarness,
    RawServer,
    RecordingServer,
    ScriptedFrontEnd,
    curl,
)

KEY = "sk-proj-" + "x7Q-" * 39  # 164 characters, the length of an OpenAI project key


def route_profile(port: int, route: str = "") -> Profile:
    return parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\n[[network.routes]]\n'
        f'name = "openai"\nupstream = "http://127.0.0.1:{port}/v1"\nsecret = "openai"\n{route}',
        "t.toml",
    )


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
        self.authorization = next(
            (
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"authorization:")
            ),
            b"",
        )
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for n in range(self.count):
            if n:
                time.sleep(self.interval)
            event = (
                b'event: response.output_text.delta\ndata: {"type": '
                b'"response.output_text.delta", "n": %d, "delta": "Hel"}\n\n' % n
            )
            self.sent.append(time.monotonic())
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        conn.sendall(b"0\r\n\r\n")


def arrivals(port: int, path: str, count: int) -> list[float]:
    """When each event `"n": i` reached the agent's side."""
    seen: list[float] = []
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        while len(seen) < count:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
            now = time.monotonic()
            while b'"n": %d' % len(seen) in got:
                seen.append(now)
    return seen


def test_each_server_sent_event_reaches_the_agent_as_the_upstream_sends_it(tmp_path: Path) -> None:
    with (
        EventStream(count=4, interval=1.0) as upstream,
        harness(
            tmp_path, route_profile(upstream.port), secrets=DictSecrets({"openai": KEY})
        ) as proxy,
    ):
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
    with (
        SlowAnswer(delay=1.5) as upstream,
        harness(
            tmp_path,
            route_profile(upstream.port),
            secrets=DictSecrets({"openai": KEY}),
            settings=settings,
        ) as proxy,
    ):
        assert status_of(proxy.port, "/routes/openai/responses")[0] == 200


def test_a_route_answers_504_after_its_own_idle_timeout(tmp_path: Path) -> None:
    with (
        SlowAnswer(delay=5) as upstream,
        harness(
            tmp_path,
            route_profile(upstream.port, 'idle_timeout = "1s"\n'),
            secrets=DictSecrets({"openai": KEY}),
        ) as proxy,
    ):
        status, took = status_of(proxy.port, "/routes/openai/responses")
        events = proxy.wait_events(1)
    assert status == 504 and 0.9 < took < 3
    assert events[0].details["reason"] == "the upstream was silent for 1 s"


# WebSocket


def frame(payload: bytes, opcode: int = 1, mask: bytes | None = b"\x01\x02\x03\x04") -> bytes:
    """One final frame (RFC 6455 §5.2); the agent's frames are masked, the server's not."""
    head = bytes([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def frames_in(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole frame in `data`."""
    out = []
    while len(data) >= 2:
        size, at = data[1] & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        mask = data[at : at + 4] if data[1] & 0x80 else b""
        at += len(mask)
        if len(data) < at + size:
            break
        payload = data[at : at + size]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        out.append((data[0] & 0x0F, payload))
        data = data[at + size :]
    return out


class WebSocketUpstream(RawServer):
    """Switches to WebSocket, says the credential it got back in a first frame (which the
    route must mask), then echoes each text frame until the agent closes."""

    def __init__(self) -> None:
        super().__init__()
        self.head = b""
        self.received: list[tuple[int, bytes]] = []

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        self.head = head
        lines = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        accept = base64.b64encode(
            hashlib.sha1(
                lines[b"sec-websocket-key"] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            ).digest()
        )
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + frame(b"you sent: " + lines.get(b"authorization", b"-"), mask=None)
        )
        data = rest
        while True:
            self.received = frames_in(data)
            if self.received and self.received[-1][0] == 8:
                break
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        for opcode, payload in self.received:
            if opcode == 1:
                conn.sendall(frame(b"echo: " + payload, mask=None))
        conn.sendall(frame(b"", opcode=8, mask=None))


HANDSHAKE = (
    "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def websocket(port: int, target: str, host: str, messages: list[bytes]) -> tuple[bytes, bytes]:
    """The handshake's answer head, and every byte after it until the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HANDSHAKE.format(target=target, host=host).encode())
        got = b""
        while b"\r\n\r\n" not in got and (chunk := sock.recv(65536)):
            got += chunk
        head, _, rest = got.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            return head, rest
        for message in messages:
            sock.sendall(frame(message))
        sock.sendall(frame(b"", opcode=8))
        while chunk := sock.recv(65536):
            rest += chunk
    return head, rest


def test_a_websocket_on_a_route_gets_the_credential_at_the_handshake_and_is_counted(
    tmp_path: Path,
) -> None:
    with (
        WebSocketUpstream() as upstream,
        harness(
            tmp_path, route_profile(upstream.port), secrets=DictSecrets({"openai": KEY})
        ) as proxy,
    ):
        head, rest = websocket(
            proxy.port,
            "/routes/openai/realtime?model=m",
            f"127.0.0.1:{proxy.port}",
            [b"hello", b"x" * 70000],
        )
        events = proxy.wait_events(1)
    assert head.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-accept: " in head.lower()
    assert f"\r\nAuthorization: Bearer {KEY}\r\n".encode() in upstream.head
    assert b"permessage-deflate" not in upstream.head  # it would hide an echoed key
    assert frames_in(rest) == [
        (1, b"you sent: Bearer " + b"*" * len(KEY)),
        (1, b"echo: hello"),
        (1, b"echo: " + b"x" * 70000),
        (8, b""),
    ]
    assert KEY.encode() not in rest
    details = events[0].details
    assert events[0].kind == "net.request" and details["status"] == 101
    assert details["route"] == "openai" and details["path"] == "/v1/realtime?model=…"
    assert details["websocket"] == {"frames_up": 3, "frames_down": 4}
    assert details["bytes_up"] == len(frame(b"hello") + frame(b"x" * 70000) + frame(b"", 8))


def test_a_websocket_to_an_allowed_host_is_relayed_and_one_elsewhere_refused_at_once(
    tmp_path: Path,
) -> None:
    with (
        WebSocketUpstream() as upstream,
        harness(tmp_path, profile(upstream.port, uploads="never")) as proxy,
    ):
        allowed = f"files.test:{upstream.port}"
        head, rest = websocket(proxy.port, f"http://{allowed}/ws", allowed, [b"hi"])
        denied = f"denied.test:{upstream.port}"
        refused, _ = websocket(proxy.port, f"http://{denied}/ws", denied, [b"hi"])
        events = proxy.wait_events(2)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames_in(rest) == [(1, b"you sent: -"), (1, b"echo: hi"), (8, b"")]
    assert b"permessage-deflate" in upstream.head  # not a route: the agent's own choice
    assert refused.startswith(b"HTTP/1.1 403 ") and b"not-listed" in refused
    relayed = next(e for e in events if e.kind == "net.request")
    assert next(e for e in events if e.kind == "net.refused").details["host"] == "denied.test"
    assert relayed.details["websocket"] == {"frames_up": 2, "frames_down": 3}


def test_a_websocket_waits_like_a_tunnel_when_every_upload_is_asked_about(tmp_path: Path) -> None:
    front = ScriptedFrontEnd(Verdict.DENY)
    with (
        WebSocketUpstream() as upstream,
        harness(tmp_path, profile(upstream.port, uploads="always"), front_end=front) as proxy,
    ):
        allowed = f"files.test:{upstream.port}"
        head, _ = websocket(proxy.port, f"http://{allowed}/ws", allowed, [b"secret plans"])
        events = proxy.wait_events(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert [q.details["websocket"] for q in front.asked] == [True]
    assert upstream.received == []  # not one frame went up
    assert events[0].kind == "net.refused" and events[0].details["rule"] == "upload-refused"


def test_every_request_a_route_adds_its_key_to_is_an_event_and_an_audit_record(
    tmp_path: Path,
) -> None:
    """One `net.credential` per request that carried the key (route, host, method, path with
    query values redacted, status, bytes), refused upstream answers included; none for a
    request refused before the key was added; the key in no event and no record."""
    key = "sk-live-" + "R4" * 18
    with RecordingServer() as upstream:
        prof = parse_profile(
            'name = "t"\nimage = "i"\n[network]\nallow_private = true\n[[network.routes]]\n'
            f'name = "llm"\nupstream = "http://127.0.0.1:{upstream.port}/v1"\n'
            'secret = "k"\n',
            "t.toml",
        )
        audit = AuditLog(tmp_path / "audit")
        with ProxyHarness(tmp_path, "s1", prof, secrets=DictSecrets({"k": key})) as proxy:
            proxy.bus.attach(audit.sink)
            base = f"http://127.0.0.1:{proxy.port}/routes/llm"
            curl("-d", '{"q": 1}', f"{base}/chat?user=alice&api_key=leaky")
            curl(f"{base}/models")
            curl(f"{base}/../etc")  # refused before anything was sent
            proxy.wait_events(4)
        audit.close()
    used = [e for e in proxy.events if e.kind is EventKind.NET_CREDENTIAL]
    assert [(e.details["method"], e.details["path"], e.details["status"]) for e in used] == [
        ("POST", "/v1/chat?user=…&api_key=…", 200),
        ("GET", "/v1/models", 200),
    ]
    first = used[0]
    assert first.subject == f"127.0.0.1:{upstream.port}" and first.details["route"] == "llm"
    assert first.details["host"] == "127.0.0.1" and first.details["route_header"] == "Authorization"
    assert first.details["bytes_up"] == 8 and first.details["bytes_down"] > 0
    kinds = [r.kind for r in records(tmp_path / "audit") if hasattr(r, "kind")]
    assert kinds.count("net.credential") == 2
    logged = b"".join(p.read_bytes() for p in (tmp_path / "audit").glob("*.jsonl"))
    assert key.encode() not in logged and b"leaky" not in logged and b"alice" not in logged
    assert all(key not in repr(e) for e in proxy.events)
