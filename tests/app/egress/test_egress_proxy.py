"""The proxy on a real unix socket against real upstream servers on 127.0.0.1, with real
clients (curl, urllib, raw sockets for what no polite client sends). Every refusal is
checked at the receiving server: it must have seen nothing."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from app.audit import AuditLog
from app.consent import Verdict
from app.egress.inspect import GrantedContent
from app.egress.keys import KeyringSecrets
from app.egress.proxy import ProxySettings, SystemResolver
from app.profiles import Profile, parse_profile
from tests.netsupport import (
    DictSecrets,
    FixedGranted,
    ProxyHarness,
    RawServer,
    RecordingServer,
    ScriptedFrontEnd,
    StaticResolver,
    curl,
    trusted_context,
    wait_until,
)

RESOLVER = {
    "files.test": ["127.0.0.1"],
    "rebind.test": ["127.0.0.1"],
    "localhost": ["127.0.0.1"],
    "ask.test": ["127.0.0.1"],
}
FAST = ProxySettings(head_timeout=0.5, idle_timeout=5, body_timeout=5)


def profile(
    port: int,
    *,
    extra: str = "",
    private: bool = True,
    uploads: str = "ask",
    threshold: str = "64k",
    timeout: str = "30s",
    network: str = "",
) -> Profile:
    text = (
        'name = "t"\nimage = "i"\n'
        f"{extra}\n"
        "[network]\n"
        f'allow = ["files.test:{port}", "rebind.test:{port}", "localhost:{port}"]\n'
        f'ask = ["ask.test:{port}"]\n'
        f"allow_private = {'true' if private else 'false'}\n{network}\n"
        f'[approval]\nuploads = "{uploads}"\nupload_threshold = "{threshold}"\n'
        f'timeout = "{timeout}"\n'
    )
    return parse_profile(text, "t.toml")


@pytest.fixture
def upstream() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def harness(tmp_path: Path, prof: Profile, **kwargs: Any) -> ProxyHarness:
    kwargs.setdefault("secrets", DictSecrets({}))
    kwargs.setdefault("resolver", StaticResolver(RESOLVER))
    kwargs.setdefault("settings", FAST)
    return ProxyHarness(tmp_path, kwargs.pop("session", "s1"), prof, **kwargs)


def raw(port: int, data: bytes, *, pause: float = 0.0, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
        if not read:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_plain_http_is_forwarded_kept_alive_and_logged(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    with harness(tmp_path, profile(upstream.port)) as proxy:
        url = f"http://files.test:{upstream.port}/a?token=abc"
        result = curl("-x", proxy.url, url, f"http://files.test:{upstream.port}/b")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.split("}")[0] + "}")["path"] == "/a?token=abc"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        with opener.open(f"http://files.test:{upstream.port}/c", timeout=10) as response:
            assert response.status == 200
        events = proxy.wait_events(3)
    assert [r["path"] for r in upstream.seen.requests] == ["/a?token=abc", "/b", "/c"]
    assert upstream.seen.connections == 2  # curl's two requests shared one upstream connection
    first = events[0]
    assert first.kind == "net.request" and first.subject == f"files.test:{upstream.port}"
    details = first.details
    assert details["path"] == "/a?token=…" and details["status"] == 200
    assert details["decision"] == "allow" and details["rule"].startswith("allow[0] files.test")
    assert details["bytes_down"] > 0 and details["address"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("request_bytes", "status", "rule"),
    [
        (
            b"GET http://denied.test:{port}/ HTTP/1.1\r\nHost: denied.test:{port}\r\n\r\n",
            403,
            "not-listed",
        ),
        (
            b"GET http://files.test:{port}@denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n",
            400,
            "bad-request",
        ),
        (
            b"GET http://denied.test/ HTTP/1.1\r\nHost: files.test:{port}\r\n\r\n",
            400,
            "host-mismatch",
        ),
        (
            b"GET http://files.test:{port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            400,
            "host-mismatch",
        ),
        (b"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 403, "ip-literal"),
        (b"CONNECT 2130706433:{port} HTTP/1.1\r\nHost: x\r\n\r\n", 403, "ip-literal"),
        (b"CONNECT 0x7f.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n", 403, "ip-literal"),
        (b"CONNECT [::ffff:127.0.0.1]:{port} HTTP/1.1\r\nHost: x\r\n\r\n", 403, "ip-literal"),
        (b"CONNECT [::1]:{port} HTTP/1.1\r\nHost: x\r\n\r\n", 403, "ip-literal"),
        (
            b"GET http://rebind.test:{port}/ HTTP/1.1\r\nHost: rebind.test:{port}\r\n\r\n",
            403,
            "private-address",
        ),
        (
            b"POST http://files.test:{port}/ HTTP/1.1\r\nHost: files.test:{port}\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: files.test\r\n\r\n",
            400,
            "bad-request",
        ),
        (
            b"POST http://files.test:{port}/ HTTP/1.1\r\nHost: files.test:{port}\r\n"
            b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
            400,
            "bad-request",
        ),
        (
            b"POST http://files.test:{port}/ HTTP/1.1\r\nHost: files.test:{port}\r\n"
            b"Transfer-Encoding: chunked, identity\r\n\r\n",
            501,
            "bad-request",
        ),
        (
            b"GET http://files.test:{port}/ HTTP/1.1\r\nHost: files.test:{port}\r\nX-Big: "
            + b"a" * 70000
            + b"\r\n\r\n",
            431,
            "bad-request",
        ),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400, "bad-request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, "bad-request"),
        (b"GET http://files.test:{port}/ HTTP/1.1\r\nHost: files.test:{port}\r\n", 408, "timeout"),
    ],
)
def test_refusals_are_clear_logged_and_reach_nobody(
    tmp_path: Path, upstream: RecordingServer, request_bytes: bytes, status: int, rule: str
) -> None:
    private = rule != "private-address"
    with harness(tmp_path, profile(upstream.port, private=private)) as proxy:
        response = raw(proxy.port, request_bytes.replace(b"{port}", str(upstream.port).encode()))
        events = proxy.wait_events(1)
        # The proxy stays up for the next client.
        ok = curl("-x", proxy.url, f"http://files.test:{upstream.port}/after")
    head = response.split(b"\r\n\r\n")[0].decode()
    assert head.startswith(f"HTTP/1.1 {status} "), head
    assert f"X-Airlock-Rule: {rule}" in head
    assert "X-Airlock-Refused: " in head
    assert events[0].kind == "net.refused" and events[0].details["rule"] == rule
    assert ok.returncode == 0, ok.stderr
    after = [] if not private else ["/after"]  # without allow_private, loopback is refused
    assert [r["path"] for r in upstream.seen.requests] == after
    assert upstream.seen.connections == len(after)


def test_a_name_is_not_resolved_when_it_is_not_listed(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    resolver = StaticResolver(RESOLVER)
    with harness(tmp_path, profile(upstream.port), resolver=resolver) as proxy:
        result = curl(
            "-x",
            proxy.url,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://leak-via-dns.evil.test/",
        )
    assert result.stdout == "403" and resolver.asked == []


def test_localhost_resolves_to_loopback_and_is_refused_without_allow_private(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    with harness(
        tmp_path, profile(upstream.port, private=False), resolver=SystemResolver()
    ) as proxy:
        result = curl("-x", proxy.url, "-i", f"http://localhost:{upstream.port}/")
    assert "403" in result.stdout.splitlines()[0]
    assert "X-Airlock-Rule: private-address" in result.stdout
    assert upstream.seen.connections == 0


def test_connect_tunnel_to_a_tls_server(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("files.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with RecordingServer(context) as server, harness(tmp_path, profile(server.port)) as proxy:
        result = curl(
            "-x",
            proxy.url,
            "--cacert",
            str(bundle),
            "--resolve",
            f"files.test:{server.port}:127.0.0.2",
            f"https://files.test:{server.port}/secure",
        )
        events = proxy.wait_events(1)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"] == "/secure"
    tunnel = events[0]
    assert tunnel.kind == "net.tunnel" and tunnel.details["status"] == 200
    assert tunnel.details["bytes_up"] > 0 and tunnel.details["bytes_down"] > 0


def test_ask_host_prompts_at_connect_time(tmp_path: Path, upstream: RecordingServer) -> None:
    for verdict, code in ((Verdict.DENY, "403"), (Verdict.ALLOW, "200")):
        front = ScriptedFrontEnd(verdict)
        with harness(
            tmp_path, profile(upstream.port), front_end=front, session=f"s-{verdict}"
        ) as proxy:
            result = curl(
                "-x",
                proxy.url,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://ask.test:{upstream.port}/asked",
            )
        assert result.stdout == code
        assert [r.subject for r in front.asked] == [f"ask.test:{upstream.port}"]
    assert [r["path"] for r in upstream.seen.requests] == ["/asked"]


PEM = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END"


@pytest.mark.parametrize(
    ("verdict", "delay", "delivered", "by"),
    [
        (Verdict.ALLOW, 0.0, True, "test"),
        (Verdict.DENY, 0.0, False, "test"),
        (Verdict.ALLOW, None, False, "timeout"),
    ],
)
def test_an_upload_carrying_a_private_key_waits_for_approval(
    tmp_path: Path,
    upstream: RecordingServer,
    verdict: Verdict,
    delay: float | None,
    delivered: bool,
    by: str,
) -> None:
    front = ScriptedFrontEnd(verdict, delay)
    with harness(tmp_path, profile(upstream.port, timeout="1s"), front_end=front) as proxy:
        result = curl(
            "-x",
            proxy.url,
            "-i",
            "--data-binary",
            "@-",
            f"http://files.test:{upstream.port}/upload",
            timeout=30,
        )
        result = curl(
            "-x",
            proxy.url,
            "-i",
            "--data-binary",
            PEM.decode(),
            f"http://files.test:{upstream.port}/upload",
        )
        events = proxy.wait_events(2)
    asked = front.asked[-1]
    assert asked.kind == "network.upload"
    assert asked.details["findings"][0]["kind"] == "private-key"
    assert asked.details["size"] == len(PEM) and asked.details["method"] == "POST"
    assert asked.details["preview"].startswith("-----BEGIN OPENSSH")
    bodies = [r["body"] for r in upstream.seen.requests]
    if delivered:
        assert bodies[-1] == PEM and bodies.count(PEM) == 1
        assert result.stdout.startswith("HTTP/1.1 200")
    else:
        assert PEM not in bodies
        assert result.stdout.startswith("HTTP/1.1 403")
        assert f"not approved ({by})" in result.stdout
    assert events[-1].details["held"] is True


def test_an_upload_of_granted_content_or_over_the_threshold_is_held(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    notes = "\n".join(f"confidential line {i} of the granted notes file here" for i in range(9))
    (tmp_path / "notes.md").write_text(notes)
    granted = FixedGranted(GrantedContent.build([("/home/u/notes.md", tmp_path / "notes.md")]))
    front = ScriptedFrontEnd(Verdict.DENY)
    with harness(
        tmp_path, profile(upstream.port, threshold="1k"), front_end=front, granted=granted
    ) as proxy:
        body = json.dumps({"text": notes})
        held = curl(
            "-x",
            proxy.url,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            body,
            f"http://files.test:{upstream.port}/g",
        )
        big = curl(
            "-x",
            proxy.url,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            "x" * 5000,
            f"http://files.test:{upstream.port}/big-upload",
        )
        small = curl(
            "-x",
            proxy.url,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            "small and harmless",
            f"http://files.test:{upstream.port}/s",
        )
    assert (held.stdout, big.stdout, small.stdout) == ("403", "403", "200")
    assert front.asked[0].details["findings"] == [
        {"kind": "granted-file", "label": "/home/u/notes.md", "offset": len(body)}
    ]
    assert front.asked[1].details["size"] == 5000 and front.asked[1].details["findings"] == []
    assert [r["path"] for r in upstream.seen.requests] == ["/s"]


def test_a_tunnel_pauses_for_approval_past_the_upload_threshold(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    body = b"z" * 4000
    request = (
        f"POST /t HTTP/1.1\r\nHost: files.test\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    for verdict in (Verdict.DENY, Verdict.ALLOW):
        front = ScriptedFrontEnd(verdict)
        with harness(
            tmp_path,
            profile(upstream.port, threshold="1k"),
            front_end=front,
            session=f"t-{verdict}",
        ) as proxy:
            connect = f"CONNECT files.test:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n"
            response = raw(proxy.port, connect.encode() + request)
        assert front.asked and front.asked[0].details["tunnel"] is True
        if verdict is Verdict.DENY:
            assert b" 200 " not in response.split(b"\r\n\r\n", 1)[1]
    assert [r["body"] for r in upstream.seen.requests] == [body]


def test_connection_limit(tmp_path: Path, upstream: RecordingServer) -> None:
    prof = profile(upstream.port, network="max_connections = 1")
    with (
        harness(tmp_path, prof) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port)) as held,
    ):
        held.sendall(f"CONNECT files.test:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert b" 200 " in held.recv(1000)
        second = curl("-x", proxy.url, "-i", f"http://files.test:{upstream.port}/")
    assert second.stdout.startswith("HTTP/1.1 429")


def test_other_sessions_are_unaffected_by_a_misbehaving_one(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    with (
        harness(tmp_path, profile(upstream.port), session="bad") as bad,
        harness(tmp_path, profile(upstream.port), session="good") as good,
    ):
        sockets = []
        for _ in range(20):  # slowloris: heads that never finish
            sock = socket.create_connection(("127.0.0.1", bad.port))
            sock.sendall(b"GET http://files.test/ HTTP/1.1\r\nHo")
            sockets.append(sock)
        raw(bad.port, b"\xff" * 100000)
        result = curl("-x", good.url, f"http://files.test:{upstream.port}/good")
        assert wait_until(
            lambda: len([e for e in bad.events if e.details.get("status") == 408]) == 20
        )
        again = curl("-x", bad.url, f"http://files.test:{upstream.port}/bad-again")
        for sock in sockets:
            sock.close()
    assert result.returncode == 0 and again.returncode == 0


def test_route_adds_the_real_key_from_the_keyring_and_the_agent_never_sees_it(
    tmp_path: Path, ca: trustme.CA, secret_service: Any, secret_index: Path
) -> None:
    key = "sk-live-" + "Q7" * 20
    secrets = KeyringSecrets(secret_index)
    secrets.set("llm-key", key)
    cert = ca.issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    with RecordingServer(context) as server:
        routes = (
            f'[[network.routes]]\nname = "llm"\nupstream = "https://localhost:'
            f'{server.port}/v1"\nsecret = "llm-key"\n'
        )
        prof = profile(server.port, network="", extra="")
        prof = parse_profile(
            'name = "t"\nimage = "i"\n[network]\nallow_private = true\n' + routes, "t.toml"
        )
        audit = AuditLog(tmp_path / "audit")
        settings = ProxySettings(own_authorities=frozenset({"127.0.0.1:3128"}))
        with harness(
            tmp_path, prof, secrets=secrets, tls=trusted_context(ca), settings=settings
        ) as proxy:
            proxy.bus.attach(audit.sink)
            base = f"http://127.0.0.1:{proxy.port}/routes/llm"
            echo = curl(
                "-i",
                "-H",
                "Authorization: Bearer placeholder",
                "-d",
                '{"prompt": "hi"}',
                f"{base}/echo-auth",
            )
            # A client that ignores NO_PROXY sends the route URL to the proxy in absolute form.
            via_proxy = curl("-x", proxy.url, "http://127.0.0.1:3128/routes/llm/models")
            proxy.wait_events(2)
        audit.close()
    assert echo.returncode == 0 and via_proxy.returncode == 0, echo.stderr
    got = [r["headers"]["authorization"] for r in server.seen.requests]
    assert got == [f"Bearer {key}", f"Bearer {key}"]
    assert [r["path"] for r in server.seen.requests] == ["/v1/echo-auth", "/v1/models"]
    assert key not in echo.stdout and key not in via_proxy.stdout
    assert "you sent: Bearer " + "*" * len(key) in echo.stdout
    logged = b"".join(p.read_bytes() for p in (tmp_path / "audit").glob("*.jsonl"))
    assert b"route:llm" in logged and key.encode() not in logged


def test_route_without_a_stored_secret_says_how_to_set_it(tmp_path: Path) -> None:
    prof = parse_profile(
        'name = "t"\nimage = "i"\n[[network.routes]]\nname = "r"\n'
        'upstream = "https://api.example.com"\nsecret = "missing"\n',
        "t.toml",
    )
    with harness(tmp_path, prof) as proxy:
        result = curl("-i", f"http://127.0.0.1:{proxy.port}/routes/r/x")
    assert result.stdout.startswith("HTTP/1.1 502")
    assert "airlock secret set missing" in result.stdout


def test_block_all_network_refuses_even_allowed_hosts(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    switch = {"on": False}
    with harness(tmp_path, profile(upstream.port), blocked=lambda: switch["on"]) as proxy:
        url = f"http://files.test:{upstream.port}/before"
        assert curl("-x", proxy.url, url).returncode == 0
        switch["on"] = True
        blocked = curl("-s", "-i", "-x", proxy.url, f"http://files.test:{upstream.port}/after")
        assert "403" in blocked.stdout.splitlines()[0]
        assert "X-Airlock-Rule: blocked-all" in blocked.stdout
        tunnel = raw(
            proxy.port,
            f"CONNECT files.test:{upstream.port} HTTP/1.1\r\n"
            f"Host: files.test:{upstream.port}\r\n\r\n".encode(),
        )
        assert tunnel.startswith(b"HTTP/1.1 403")
    assert [r["path"] for r in upstream.seen.requests] == ["/before"]


class HostileUpstream(RawServer):
    """An upstream that hands the credential back in every way a scrubber of the body's
    plain text would miss: in the status line, compressed, in bytes that are not HTTP."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        self.requests.append(head)
        path = head.split(b" ")[1]
        auth = next(
            (
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"authorization:")
            ),
            b"",
        )
        if path.endswith(b"/reason"):
            conn.sendall(b"HTTP/1.1 401 Bad key " + auth + b"\r\nContent-Length: 0\r\n\r\n")
        elif path.endswith(b"/gzip"):
            body = gzip.compress(b"you sent: " + auth)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        else:
            conn.sendall(b"HTTP/1.1 2x0 " + auth + b"\r\n\r\n")  # not HTTP


@pytest.mark.parametrize("case", ["reason", "gzip", "garbage", "trailing space"])
def test_a_route_credential_never_comes_back_to_the_agent_or_into_the_log(
    tmp_path: Path, case: str
) -> None:
    key = "sk-live-" + "K9" * 16
    stored = key + " " if case == "trailing space" else key  # h11 would quote it refusing it
    with HostileUpstream() as upstream:
        prof = parse_profile(
            'name = "t"\nimage = "i"\n[network]\nallow_private = true\n[[network.routes]]\n'
            f'name = "r"\nupstream = "http://127.0.0.1:{upstream.port}"\nsecret = "k"\n',
            "t.toml",
        )
        audit = AuditLog(tmp_path / "audit")
        with harness(tmp_path, prof, secrets=DictSecrets({"k": stored})) as proxy:
            proxy.bus.attach(audit.sink)
            path = "garbage" if case in ("garbage", "trailing space") else case
            got = curl("-i", "--compressed", f"http://127.0.0.1:{proxy.port}/routes/r/{path}")
            proxy.wait_events(1)
        audit.close()
    assert key not in got.stdout and key not in got.stderr, got.stdout
    logged = b"".join(p.read_bytes() for p in (tmp_path / "audit").glob("*.jsonl"))
    assert b'"route":"r"' in logged and key.encode() not in logged
    if case == "trailing space":
        assert upstream.requests == []  # refused before anything was sent
        assert "store it again with `airlock secret set k`" in got.stdout
    else:
        assert upstream.requests and b"accept-encoding: identity" in upstream.requests[0]


def test_an_upload_one_byte_past_the_threshold_is_held_and_one_at_it_is_not(
    tmp_path: Path, upstream: RecordingServer
) -> None:
    """The request's data is its body and what its head carries: here the path "/x" (2
    bytes; Host, Content-Length and Connection are Airlock's own), so 1022 body bytes reach
    the threshold of 1 KiB and 1023 pass it."""
    codes = []
    for size in (1022, 1023):
        front = ScriptedFrontEnd(Verdict.DENY)
        with harness(
            tmp_path, profile(upstream.port, threshold="1k"), front_end=front, session=f"s{size}"
        ) as proxy:
            response = raw(
                proxy.port,
                (
                    f"POST http://files.test:{upstream.port}/x HTTP/1.1\r\n"
                    f"Host: files.test:{upstream.port}\r\nContent-Length: {size}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + b"x" * size,
            )
        codes.append(response.split(b" ")[1].decode())
        assert [q.details["size"] for q in front.asked] == ([] if size == 1022 else [1023])
    assert codes == ["200", "403"]
    assert [len(r["body"]) for r in upstream.seen.requests] == [1022]


class SplittingUpstream(RawServer):
    """Echoes the credential in a body, sent in two writes a moment apart, the key cut in
    the middle: the proxy reads it as two chunks."""

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        auth = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"authorization:")
        )
        body = b"you sent: " + auth + b"."
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:30])
        time.sleep(0.2)
        conn.sendall(body[30:])


def test_a_route_credential_echoed_in_two_pieces_is_masked_whole(tmp_path: Path) -> None:
    key = "sk-proj-" + "Ab3" * 52
    with SplittingUpstream() as upstream:
        prof = parse_profile(
            'name = "t"\nimage = "i"\n[network]\nallow_private = true\n[[network.routes]]\n'
            f'name = "r"\nupstream = "http://127.0.0.1:{upstream.port}"\nsecret = "k"\n',
            "t.toml",
        )
        with harness(tmp_path, prof, secrets=DictSecrets({"k": key})) as proxy:
            got = curl("-s", f"http://127.0.0.1:{proxy.port}/routes/r/echo")
    assert got.stdout == "you sent: Bearer " + "*" * len(key) + "."
