"""Inspected HTTPS on real sockets: the proxy with a session CA between real clients (curl,
urllib, raw TLS sockets for what no polite client sends) and real TLS upstreams with their
own test CA on 127.0.0.1. Every refusal is checked at the upstream: it saw nothing."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from app.consent import Verdict
from app.egress.ca import SessionCA
from app.egress.inspect import GrantedContent
from app.events import EventKind
from app.profiles import Profile, parse_profile
from tests.app.egress.test_egress_proxy import harness
from tests.netsupport import (
    FixedGranted,
    ProxyHarness,
    RawServer,
    RecordingServer,
    ScriptedFrontEnd,
    curl,
    trusted_context,
    wait_until,
)

PEM = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END"


def server_context(ca: trustme.CA, name: str = "localhost") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def inspect_profile(
    port: int, *, rule: str = "", opaque: int | None = None, extra: str = "", timeout: str = "30s"
) -> Profile:
    rules = [f'{{ host = "localhost", ports = [{port}], inspect = true{rule} }}']
    if opaque is not None:
        rules.append(f'{{ host = "files.test", ports = [{opaque}] }}')
    return parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\n'
        f"allow = [{', '.join(rules)}]\n{extra}"
        f'[approval]\nuploads = "ask"\nupload_threshold = "64k"\ntimeout = "{timeout}"\n',
        "t.toml",
    )


@pytest.fixture
def upstream(ca: trustme.CA) -> Iterator[RecordingServer]:
    with RecordingServer(server_context(ca)) as server:
        yield server


@pytest.fixture
def session_ca(tmp_path: Path) -> SessionCA:
    authority = SessionCA("s1")
    (tmp_path / "session-ca.pem").write_bytes(authority.certificate_pem)
    return authority


def inspecting(
    tmp_path: Path, prof: Profile, ca: trustme.CA, session_ca: SessionCA, **kwargs: Any
) -> ProxyHarness:
    return harness(tmp_path, prof, tls=trusted_context(ca), ca=session_ca, **kwargs)


def agent_context(tmp_path: Path) -> ssl.SSLContext:
    """What the agent's clients trust: the session's CA (and nothing of the test CA)."""
    return ssl.create_default_context(cafile=str(tmp_path / "session-ca.pem"))


def tunnel(
    proxy: int, host: str, port: int, context: ssl.SSLContext, server_hostname: str | None
) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return context.wrap_socket(sock, server_hostname=server_hostname)


def read_all(sock: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (OSError, ssl.SSLError):
        pass
    return got


def test_curl_and_urllib_see_the_upstream_and_a_path_rule_decides_inside(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    prof = inspect_profile(upstream.port, rule=', paths = ["/v1/messages", "/repos/*"]')
    cafile = str(tmp_path / "session-ca.pem")
    base = f"https://localhost:{upstream.port}"
    with inspecting(tmp_path, prof, ca, session_ca) as proxy:
        allowed = curl("-x", proxy.url, "--cacert", cafile, "-d", "{}", f"{base}/v1/messages")
        below = curl("-x", proxy.url, "--cacert", cafile, f"{base}/repos/a/b?token=secret")
        other = curl("-x", proxy.url, "--cacert", cafile, "-i", f"{base}/other")
        dots = curl(
            "-x", proxy.url, "--cacert", cafile, "-i", "--path-as-is", f"{base}/repos/../admin"
        )
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": proxy.url}),
            urllib.request.HTTPSHandler(context=agent_context(tmp_path)),
        )
        with opener.open(f"{base}/v1/messages", data=b"{}") as answer:
            by_urllib = answer.status
            answer.read()
        events = proxy.wait_events(5)
    assert json.loads(allowed.stdout)["path"] == "/v1/messages", allowed.stderr
    assert json.loads(below.stdout)["path"] == "/repos/a/b?token=secret"
    assert other.stdout.startswith("HTTP/1.1 200 Connection established")
    assert "HTTP/1.1 403" in other.stdout and "path /other is not allowed" in other.stdout
    assert "HTTP/1.1 403" in dots.stdout
    assert by_urllib == 200
    assert [r["path"] for r in upstream.seen.requests] == [
        "/v1/messages",
        "/repos/a/b?token=secret",
        "/v1/messages",
    ]
    logged = [
        (e.kind, e.details["method"], e.details["path"], e.details["inspection"]) for e in events
    ]
    assert logged == [
        ("net.request", "POST", "/v1/messages", "inspected"),
        ("net.request", "GET", "/repos/a/b?token=…", "inspected"),
        ("net.refused", "GET", "/other", "inspected"),
        ("net.refused", "GET", "/repos/../admin", "inspected"),
        ("net.request", "POST", "/v1/messages", "inspected"),
    ]


def test_a_host_not_marked_stays_an_opaque_tunnel(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    prof = inspect_profile(1, opaque=upstream.port)
    with inspecting(tmp_path, prof, ca, session_ca) as proxy:
        # The agent must trust the upstream's own CA: nothing in between.
        ca.cert_pem.write_to_path(str(tmp_path / "test-ca.pem"))
        result = curl(
            "-x",
            proxy.url,
            "--cacert",
            str(tmp_path / "test-ca.pem"),
            "--resolve",
            f"localhost:{upstream.port}:127.0.0.1",
            "--connect-to",
            f"localhost:{upstream.port}:files.test:{upstream.port}",
            f"https://localhost:{upstream.port}/through",
        )
        events = proxy.wait_events(1)
    assert json.loads(result.stdout)["path"] == "/through", result.stderr
    assert events[0].kind == "net.tunnel" and events[0].details["inspection"] == "opaque"


@pytest.mark.parametrize(
    ("name", "trusted", "why"),
    [
        ("localhost", False, "unable to get local issuer certificate"),
        ("other.test", True, "Hostname mismatch"),
    ],
)
def test_an_upstream_whose_certificate_fails_is_refused_with_the_reason(
    tmp_path: Path, ca: trustme.CA, session_ca: SessionCA, name: str, trusted: bool, why: str
) -> None:
    issuer = ca if trusted else trustme.CA()
    with (
        RecordingServer(server_context(issuer, name)) as bad,
        inspecting(tmp_path, inspect_profile(bad.port), ca, session_ca) as proxy,
    ):
        result = curl(
            "-x",
            proxy.url,
            "--cacert",
            str(tmp_path / "session-ca.pem"),
            "-i",
            f"https://localhost:{bad.port}/secret-path",
        )
        events = proxy.wait_events(1)
    assert "HTTP/1.1 502" in result.stdout
    assert events[0].details["rule"] == "upstream-certificate"
    assert why in events[0].details["reason"]
    assert bad.seen.requests == []


@pytest.mark.parametrize(
    ("verdict", "delay", "delivered", "by"),
    [
        (Verdict.ALLOW, 0.0, True, "test"),
        (Verdict.DENY, 0.0, False, "test"),
        (Verdict.ALLOW, None, False, "timeout"),
    ],
)
def test_a_private_key_posted_over_https_is_held_with_its_decrypted_preview(
    tmp_path: Path,
    ca: trustme.CA,
    upstream: RecordingServer,
    session_ca: SessionCA,
    verdict: Verdict,
    delay: float | None,
    delivered: bool,
    by: str,
) -> None:
    front = ScriptedFrontEnd(verdict, delay)
    with inspecting(
        tmp_path, inspect_profile(upstream.port, timeout="1s"), ca, session_ca, front_end=front
    ) as proxy:
        result = curl(
            "-x",
            proxy.url,
            "--cacert",
            str(tmp_path / "session-ca.pem"),
            "-i",
            "--data-binary",
            PEM.decode(),
            f"https://localhost:{upstream.port}/upload?key=abc",
        )
        events = proxy.wait_events(1)
    asked = front.asked[-1]
    assert asked.kind == "network.upload"
    assert asked.details["findings"][0]["kind"] == "private-key"
    assert asked.details["preview"].startswith("-----BEGIN OPENSSH")
    assert asked.details["path"] == "/upload?key=…"
    bodies = [r["body"] for r in upstream.seen.requests]
    if delivered:
        assert bodies == [PEM]
        assert "HTTP/1.1 200 OK" in result.stdout
    else:
        assert bodies == []
        assert "HTTP/1.1 403" in result.stdout and f"not approved ({by})" in result.stdout
    assert events[-1].details["held"] is True
    assert events[-1].details["inspection"] == "inspected"


def test_a_granted_files_content_sent_over_https_is_held(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    notes = "\n".join(f"confidential line {i} of the granted notes file here" for i in range(9))
    (tmp_path / "notes.md").write_text(notes)
    granted = FixedGranted(GrantedContent.build([("/home/u/notes.md", tmp_path / "notes.md")]))
    front = ScriptedFrontEnd(Verdict.DENY)
    with inspecting(
        tmp_path, inspect_profile(upstream.port), ca, session_ca, front_end=front, granted=granted
    ) as proxy:
        result = curl(
            "-x",
            proxy.url,
            "--cacert",
            str(tmp_path / "session-ca.pem"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            json.dumps({"text": notes}),
            f"https://localhost:{upstream.port}/paste",
        )
    assert result.stdout == "403"
    assert front.asked[0].details["findings"][0]["kind"] == "granted-file"
    assert "confidential line 0" in front.asked[0].details["preview"]
    assert upstream.seen.requests == []


class EventStream(RawServer):
    """A TLS upstream streaming server-sent events a second apart, chunked; it notes when
    it finished."""

    def __init__(self, context: ssl.SSLContext, count: int = 3) -> None:
        super().__init__()
        self.context, self.count = context, count
        self.finished = 0.0

    def handle(self, conn: socket.socket) -> None:
        with self.context.wrap_socket(conn, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := tls.recv(65536)):
                head += chunk
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for n in range(self.count):
                if n:
                    time.sleep(1.0)
                event = b'data: {"n": %d}\n\n' % n
                tls.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            self.finished = time.monotonic()
            tls.sendall(b"0\r\n\r\n")


def test_server_sent_events_stream_through_interception(
    tmp_path: Path, ca: trustme.CA, session_ca: SessionCA
) -> None:
    with (
        EventStream(server_context(ca)) as upstream,
        inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy,
        tunnel(
            proxy.port, "localhost", upstream.port, agent_context(tmp_path), "localhost"
        ) as sock,
    ):
        sock.sendall(
            f"GET /v1/stream HTTP/1.1\r\nHost: localhost:{upstream.port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        got = b""
        while b'"n": 0' not in got:
            got += sock.recv(65536)
        first = time.monotonic()
        while b"0\r\n\r\n" not in got:
            got += sock.recv(65536)
    assert upstream.finished > first + 1.5  # the first event came two events early
    assert b'"n": 2' in got


# The adversary's side: each attempt refused, logged, and nothing at the upstream.


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated")
def test_a_client_offering_only_tls_1_0_is_refused(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(tmp_path / "session-ca.pem"))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
    with inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy:
        with pytest.raises(ssl.SSLError):
            tunnel(proxy.port, "localhost", upstream.port, old, "localhost")
        events = proxy.wait_events(1)
    assert events[0].kind == "net.refused" and events[0].details["rule"] == "tls-version"
    assert upstream.seen.connections == 0


def test_a_client_that_refuses_the_session_ca_gets_an_event_naming_the_fix(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    pinned = ssl.create_default_context()  # the system's store only: like a pinning client
    with inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy:
        with pytest.raises(ssl.SSLCertVerificationError):
            tunnel(proxy.port, "localhost", upstream.port, pinned, "localhost")
        events = proxy.wait_events(1)
    assert events[0].details["rule"] == "tls-pinned"
    assert "localhost" in events[0].details["reason"]
    assert "inspect = false" in events[0].details["reason"]
    assert upstream.seen.connections == 0


def test_a_tls_name_other_than_the_connect_target_is_refused(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    lax = agent_context(tmp_path)
    lax.check_hostname = False  # the adversary accepts the certificate for another name
    with inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy:
        with tunnel(proxy.port, "localhost", upstream.port, lax, "elsewhere.test") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n")
            answer = read_all(sock)
        events = proxy.wait_events(1)
    assert answer.startswith(b"HTTP/1.1 421")
    assert events[0].details["rule"] == "sni-mismatch"
    assert upstream.seen.connections == 0


@pytest.mark.parametrize(
    ("request_bytes", "status", "rule"),
    [
        (b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n", 400, "host-mismatch"),
        (
            b"GET https://elsewhere.test/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n",
            400,
            "host-mismatch",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: localhost:{port}\r\nHost: elsewhere.test\r\n\r\n",
            400,
            "bad-request",
        ),  # (h11 refuses two Host headers itself)
        (
            b"POST / HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
            b"Host: localhost:{port}\r\n\r\n",
            400,
            "bad-request",
        ),
        (
            b"CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\n\r\n",
            400,
            "bad-request",
        ),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http2"),
    ],
)
def test_a_request_inside_that_names_another_host_or_smuggles_is_refused(
    tmp_path: Path,
    ca: trustme.CA,
    upstream: RecordingServer,
    session_ca: SessionCA,
    request_bytes: bytes,
    status: int,
    rule: str,
) -> None:
    with inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy:
        with tunnel(
            proxy.port, "localhost", upstream.port, agent_context(tmp_path), "localhost"
        ) as sock:
            sock.sendall(request_bytes.replace(b"{port}", str(upstream.port).encode()))
            answer = read_all(sock)
        events = proxy.wait_events(1)
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer
    assert events[0].kind == "net.refused" and events[0].details["rule"] == rule
    assert upstream.seen.requests == []


def test_a_client_offering_only_http2_gets_no_protocol_and_is_refused_if_it_speaks_it(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    h2 = agent_context(tmp_path)
    h2.set_alpn_protocols(["h2"])
    with inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy:
        with tunnel(proxy.port, "localhost", upstream.port, h2, "localhost") as sock:
            assert sock.selected_alpn_protocol() is None  # http/1.1 is all the proxy offers
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            answer = read_all(sock)
        events = proxy.wait_events(1)
    assert answer.startswith(b"HTTP/1.1 505") and b"HTTP/2" in answer
    assert events[0].details["rule"] == "http2"
    assert upstream.seen.connections == 0


def test_a_request_pipelined_after_an_allowed_one_is_decided_on_its_own(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    prof = inspect_profile(upstream.port, rule=', paths = ["/v1/*"]')
    port = upstream.port
    with inspecting(tmp_path, prof, ca, session_ca) as proxy:
        with tunnel(proxy.port, "localhost", port, agent_context(tmp_path), "localhost") as sock:
            sock.sendall(
                f"GET /v1/a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                f"GET /admin HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()
            )
            answer = read_all(sock)
        events = proxy.wait_events(2)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 403" in answer
    assert [r["path"] for r in upstream.seen.requests] == ["/v1/a"]
    assert [e.kind for e in events] == ["net.request", "net.refused"]


def test_leaf_certificates_are_cached_and_verify_against_the_session_ca(
    tmp_path: Path, session_ca: SessionCA
) -> None:
    first = session_ca.server_context("api.example.com")
    assert session_ca.server_context("api.example.com") is first
    client = agent_context(tmp_path)
    for host in ("api.example.com", "127.0.0.1"):
        server = session_ca.server_context(host)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        back_in, back_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        agent = client.wrap_bio(back_in, back_out, server_hostname=host)
        proxy = server.wrap_bio(incoming, outgoing, server_side=True)
        for _ in range(4):
            for side in (agent, proxy):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
            incoming.write(back_out.read())
            back_in.write(outgoing.read())
        assert agent.version() == "TLSv1.3"
        assert session_ca.sni_of(proxy) == (host if host[0].isalpha() else None)


def test_the_trust_bundle_is_the_system_one_with_the_session_ca_added(
    session_ca: SessionCA,
) -> None:
    bundle = session_ca.trust_bundle(b"-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----")
    assert bundle.startswith(b"-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n")
    assert bundle.endswith(session_ca.certificate_pem)
    assert b"PRIVATE" not in bundle
    assert "s1" in repr(session_ca) and "PRIVATE" not in repr(session_ca)


def test_an_ask_host_is_asked_once_at_the_connect(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    prof = parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\ninspect = true\n'
        f'ask = [{{ host = "localhost", ports = [{upstream.port}] }}]\n',
        "t.toml",
    )
    front = ScriptedFrontEnd(Verdict.ALLOW)
    with inspecting(tmp_path, prof, ca, session_ca, front_end=front) as proxy:
        with tunnel(
            proxy.port, "localhost", upstream.port, agent_context(tmp_path), "localhost"
        ) as sock:
            port = upstream.port
            sock.sendall(
                f"GET /1 HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                f"GET /2 HTTP/1.1\r\nHost: localhost:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            read_all(sock)
        assert wait_until(lambda: len(upstream.seen.requests) == 2)
    assert [r.kind for r in front.asked] == ["network.host"]


def test_urllib_without_the_session_ca_cannot_be_fooled(
    tmp_path: Path, ca: trustme.CA, upstream: RecordingServer, session_ca: SessionCA
) -> None:
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context())
    )
    with inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy:
        opener.add_handler(urllib.request.ProxyHandler({"https": proxy.url}))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            opener.open(f"https://localhost:{upstream.port}/")
    assert upstream.seen.requests == []


# The pure parts, by table.


@pytest.mark.parametrize(
    ("allowed", "target", "fits"),
    [
        ((), "/anything", True),
        (("/v1/messages",), "/v1/messages", True),
        (("/v1/messages",), "/v1/messages?beta=1", True),
        (("/v1/messages",), "/v1/messages/x", False),
        (("/v1/messages",), "/v1/Messages", False),
        (("/repos/*",), "/repos/", True),
        (("/repos/*",), "/repos/a/b", True),
        (("/repos/*",), "/repos", False),
        (("/repos/*",), "/repos/../admin", False),
        (("/repos/*",), "/repos/%2e%2e/admin", False),
        (("/repos/*",), "/repos/a%2fb", False),
        (("/repos/*",), "/repos/a\\..\\b", False),
        (("/v1/messages", "/repos/*"), "/other", False),
    ],
)
def test_path_rules(allowed: tuple[str, ...], target: str, fits: bool) -> None:
    from app.egress.paths import path_fits

    assert path_fits(allowed, target) is fits


@pytest.mark.parametrize(
    ("target", "host_header", "result"),
    [
        (b"/v1/x?q=1", b"api.test", ("/v1/x?q=1", None)),
        (b"/", b"api.test:443", ("/", None)),
        (b"/", b"API.test.", ("/", None)),
        (b"https://api.test/v1", b"api.test", ("/v1", None)),
        (b"https://api.test?q", b"api.test", ("/?q", None)),
        (b"/", b"api.test:8443", (None, "host-mismatch")),
        (b"/", b"other.test", (None, "host-mismatch")),
        (b"https://other.test/", b"api.test", (None, "host-mismatch")),
        (b"https://api.test@other.test/", b"api.test", (None, "host-mismatch")),
        (b"http://api.test/", b"api.test", (None, "bad-request")),
        (b"*", b"api.test", (None, "bad-request")),
        (b"/#frag", b"api.test", (None, "bad-request")),
    ],
)
def test_requests_inside_a_tunnel_name_only_its_host(
    target: bytes, host_header: bytes, result: tuple[str | None, str | None]
) -> None:
    from app.egress.interception import classify_inside
    from app.egress.requests import Refusal

    got = classify_inside(b"GET", target, [(b"host", host_header)], "api.test", 443)
    if isinstance(got, Refusal):
        assert (None, got.rule) == result
    else:
        assert (got.path, None) == result and got.tls and got.port == 443


@pytest.mark.parametrize(
    ("error", "rule"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "tls-pinned"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "tls-pinned"),
        ("UNSUPPORTED_PROTOCOL", "tls-version"),
        ("VERSION_TOO_LOW", "tls-version"),
        ("TLSV1_ALERT_NO_APPLICATION_PROTOCOL", "http2"),
        ("", "tls-handshake"),
    ],
)
def test_a_failed_handshake_is_named_by_its_likely_cause(error: str, rule: str) -> None:
    from app.egress.interception import handshake_refusal

    refusal = handshake_refusal("api.test", error)
    assert refusal.rule == rule and "api.test" in refusal.reason


@pytest.mark.parametrize(
    ("sni", "refused"),
    [
        (None, False),
        ("api.test", False),
        ("API.TEST.", False),
        ("other.test", True),
        ("bad name!", True),
    ],
)
def test_the_tls_name_must_be_the_connect_host(sni: str | None, refused: bool) -> None:
    from app.egress.interception import sni_refusal

    assert (sni_refusal("api.test", sni) is not None) is refused


@pytest.mark.parametrize(
    ("network", "method", "path", "action", "inspect"),
    [
        (
            'allow = [{ host = "api.test", inspect = true, methods = ["POST"] }]',
            "CONNECT",
            None,
            "allow",
            True,
        ),
        (
            'allow = [{ host = "api.test", inspect = true, methods = ["POST"] }]',
            "GET",
            "/",
            "deny",
            False,
        ),
        ('allow = [{ host = "api.test", methods = ["POST"] }]', "CONNECT", None, "deny", False),
        ('allow = [{ host = "api.test", paths = ["/v1/*"] }]', "CONNECT", None, "deny", False),
        (
            'inspect = true\nallow = [{ host = "api.test", paths = ["/v1/*"] }]',
            "CONNECT",
            None,
            "allow",
            True,
        ),
        (
            'inspect = true\nallow = [{ host = "api.test", inspect = false }]',
            "CONNECT",
            None,
            "allow",
            False,
        ),
        (
            'inspect = true\nallow = [{ host = "api.test", paths = ["/v1/*"] }]',
            "POST",
            "/v1/x",
            "allow",
            True,
        ),
        (
            'inspect = true\nallow = [{ host = "api.test", paths = ["/v1/*"] }]',
            "POST",
            "/v2/x",
            "deny",
            False,
        ),
        ('allow = ["api.test"]', "CONNECT", None, "allow", False),
    ],
)
def test_connect_and_requests_by_inspection_methods_and_paths(
    network: str, method: str, path: str | None, action: str, inspect: bool
) -> None:
    from app.egress.policy import decide_destination

    prof = parse_profile(f'name = "t"\nimage = "i"\n[network]\n{network}\n', "t.toml")
    decision = decide_destination(prof.network, "api.test", 443, method, path=path)
    assert (decision.action, decision.inspect) == (action, inspect), decision.reason


# Credential swap in place.

KEY = "sk-ant-api03-" + "Zq9" * 30


def route_profile(port: int, other: int, route: str = "") -> Profile:
    return parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\n'
        f'allow = [{{ host = "files.test", ports = [{other}], inspect = true }}]\n'
        '[[network.routes]]\nname = "claude"\nsecret = "anthropic"\nintercept = true\n'
        f'upstream = "https://localhost:{port}"\nplaceholder_env = "ANTHROPIC_API_KEY"\n'
        f"{route}",
        "t.toml",
    )


@pytest.mark.parametrize(
    ("route", "where"),
    [
        ('header = "x-api-key: {secret}"\n', "header"),
        ('query = "key"\n', "query"),
        ("", "authorization"),  # the default: Authorization: Bearer {secret}
    ],
)
def test_the_placeholder_becomes_the_real_key_only_on_the_way_to_the_routes_host(
    tmp_path: Path,
    ca: trustme.CA,
    upstream: RecordingServer,
    session_ca: SessionCA,
    route: str,
    where: str,
) -> None:
    from app.egress.interception import placeholder
    from tests.netsupport import DictSecrets

    fake = placeholder(route_profile(1, 1).network.routes[0])
    cafile = str(tmp_path / "session-ca.pem")
    with (
        RecordingServer(server_context(ca, "files.test")) as other,
        inspecting(
            tmp_path,
            route_profile(upstream.port, other.port, route),
            ca,
            session_ca,
            secrets=DictSecrets({"anthropic": KEY}),
        ) as proxy,
    ):
        sent = curl(
            "-x",
            proxy.url,
            "--cacert",
            cafile,
            "-H",
            f"x-api-key: {fake}",
            "-H",
            "Accept-Encoding: gzip",
            "-d",
            "{}",
            f"https://localhost:{upstream.port}/v1/messages?key={fake}&beta=1",
        )
        echoed = curl(
            "-x",
            proxy.url,
            "--cacert",
            cafile,
            "-H",
            f"Authorization: {fake}",
            f"https://localhost:{upstream.port}/echo-auth?key={fake}",
        )
        stray = curl(
            "-x",
            proxy.url,
            "--cacert",
            cafile,
            "-i",
            "-H",
            f"x-api-key: {fake}",
            f"https://files.test:{other.port}/collect",
        )
        stray_url = curl(
            "-x", proxy.url, "--cacert", cafile, "-i", f"https://files.test:{other.port}/c?k={fake}"
        )
        stray_body = curl(
            "-x",
            proxy.url,
            "--cacert",
            cafile,
            "-i",
            "-d",
            json.dumps({"note": "x" * 5000, "key": fake}),
            f"https://files.test:{other.port}/paste",
        )
        logged = proxy.wait_events(7)
    # Each request the route's key went out with is also a `net.credential` record.
    used = [e for e in logged if e.kind is EventKind.NET_CREDENTIAL]
    events = [e for e in logged if e.kind is not EventKind.NET_CREDENTIAL]
    assert [e.details["route"] for e in used] == ["claude", "claude"]
    assert all(KEY not in json.dumps(dict(e.details)) for e in used)
    first = upstream.seen.requests[0]
    if where == "header":
        assert first["headers"]["x-api-key"] == KEY
        assert first["path"] == f"/v1/messages?key={fake}&beta=1"
    elif where == "query":
        assert first["headers"]["x-api-key"] == fake  # not where the profile says it goes
        assert first["path"] == f"/v1/messages?beta=1&key={KEY}"
    else:
        assert first["headers"]["authorization"] == f"Bearer {KEY}"
        assert "you sent: Bearer " + "*" * len(KEY) in echoed.stdout  # the echo, scrubbed
    assert first["headers"]["accept-encoding"] == "identity"
    assert json.loads(sent.stdout)["method"] == "POST"
    assert KEY not in echoed.stdout and KEY not in sent.stdout
    assert other.seen.requests == []
    for result in (stray, stray_url, stray_body):
        assert "HTTP/1.1 403" in result.stdout and "placeholder" in result.stdout
    assert [e.details["rule"] for e in events] == [
        "route:claude",
        "route:claude",
        "placeholder",
        "placeholder",
        "placeholder",
    ]
    assert all(KEY not in json.dumps(dict(e.details)) for e in events)
    assert events[0].details["route"] == "claude"


def test_a_session_needs_a_ca_only_when_it_may_inspect_and_warms_the_hosts_it_names() -> None:
    from app.egress.trust import inspects, known_hosts

    def network(text: str) -> Any:
        return parse_profile(f'name = "t"\nimage = "i"\n[network]\n{text}\n', "t.toml").network

    plain = network('allow = ["api.test", { host = "x.test", inspect = false }]')
    assert not inspects(plain) and known_hosts(plain) == []
    some = network(
        'allow = [{ host = "api.test", inspect = true }, "*.cdn.test", "o.test"]\n'
        'ask = [{ host = "*.wild.test", inspect = true }]'
    )
    assert inspects(some) and known_hosts(some) == ["api.test"]
    everything = network(
        'inspect = true\nallow = ["a.test", { host = "b.test", '
        'inspect = false }]\n[[network.routes]]\nname = "r"\nsecret = "s"\n'
        'upstream = "https://api.anthropic.com"\nintercept = true\n'
    )
    assert known_hosts(everything) == ["a.test", "api.anthropic.com"]


def test_a_wss_websocket_to_an_inspected_host_is_relayed_and_counted(
    tmp_path: Path, ca: trustme.CA, session_ca: SessionCA
) -> None:
    from tests.app.egress.test_egress_routes import (
        HANDSHAKE,
        WebSocketUpstream,
        frame,
        frames_in,
    )

    context = server_context(ca)

    class SecureWebSocket(WebSocketUpstream):
        def handle(self, conn: socket.socket) -> None:
            with context.wrap_socket(conn, server_side=True) as tls:
                super().handle(tls)

    with (
        SecureWebSocket() as upstream,
        inspecting(tmp_path, inspect_profile(upstream.port), ca, session_ca) as proxy,
        tunnel(
            proxy.port, "localhost", upstream.port, agent_context(tmp_path), "localhost"
        ) as sock,
    ):
        sock.sendall(
            HANDSHAKE.format(target="/v1/live", host=f"localhost:{upstream.port}").encode()
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        head, _, rest = got.partition(b"\r\n\r\n")
        sock.sendall(frame(b"hello") + frame(b"", opcode=8))
        rest += read_all(sock)
        events = proxy.wait_events(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert (1, b"echo: hello") in frames_in(rest)
    details = events[0].details
    assert details["inspection"] == "inspected" and details["path"] == "/v1/live"
    assert details["websocket"]["frames_up"] == 2


# The core's side, without sockets: the playbook of an inspected CONNECT.


def test_playbook_an_inspected_connect_becomes_plain_http_to_that_host_only() -> None:
    from app.egress.exchange import ClientConnection
    from app.egress.interception import Handshake, StartTLS
    from app.egress.steps import (
        Connect,
        Connected,
        Log,
        ProxySettings,
        ReadClient,
        ReadGranted,
        ReadUpstream,
        RefuseClient,
        Resolve,
        SendUpstream,
    )
    from app.events import EventKind
    from tests.app.egress.test_egress_exchange import LOOPBACK, Playbook

    prof = parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\n'
        'allow = [{ host = "api.test", inspect = true, '
        'paths = ["/v1/*"] }]\n',
        "t.toml",
    )
    book = Playbook(ClientConnection("s1", prof, ProxySettings(splice=False)))
    book.give(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
    assert book.expect(Resolve) == Resolve("api.test", 443, 10.0)
    book.give(LOOPBACK)
    start = book.expect(StartTLS)
    assert start.host == "api.test" and start.established.startswith(b"HTTP/1.1 200 ")
    book.give(Handshake("api.test", "TLSv1.3", "http/1.1"))
    book.expect(ReadClient)
    book.give(b"POST /v1/messages HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\n{}")
    book.expect(ReadGranted)  # the body is inspected as any upload is
    book.give(None)
    # No second lookup: the addresses checked at the CONNECT; TLS to the same name.
    assert book.expect(Connect) == Connect(LOOPBACK, 443, "api.test")
    book.give(Connected("127.0.0.1", spliceable=False))
    sent = b"".join(book.expect(SendUpstream).data)
    assert sent.startswith(b"POST /v1/messages HTTP/1.1\r\nhost: api.test\r\n")
    while isinstance(book.command, SendUpstream):
        book.give()
    book.expect(ReadUpstream)
    book.give(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert book.sent_to_client().endswith(b"\r\n\r\nok")
    log = book.expect(Log)
    assert log.kind is EventKind.NET_REQUEST
    assert log.record.details()["inspection"] == "inspected"
    book.give()
    book.expect(ReadClient)
    book.give(b"GET /admin HTTP/1.1\r\nHost: api.test\r\n\r\n")
    log = book.expect(Log)
    assert log.kind is EventKind.NET_REFUSED and "path /admin" in log.record.reason
    book.give()
    assert book.expect(RefuseClient).response.startswith(b"HTTP/1.1 403 ")


def test_playbook_a_failed_handshake_is_logged_and_nothing_is_sent() -> None:
    from app.egress.exchange import ClientConnection
    from app.egress.interception import StartTLS, handshake_refusal
    from app.egress.steps import Log, ProxySettings
    from app.events import EventKind
    from tests.app.egress.test_egress_exchange import LOOPBACK, Playbook

    prof = parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow_private = true\n'
        'inspect = true\nallow = ["api.test"]\n',
        "t.toml",
    )
    book = Playbook(ClientConnection("s1", prof, ProxySettings(splice=False)))
    book.give(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
    book.give(LOOPBACK)
    book.expect(StartTLS)
    book.fail(handshake_refusal("api.test", "TLSV1_ALERT_UNKNOWN_CA"))
    log = book.expect(Log)
    assert log.kind is EventKind.NET_REFUSED and log.record.rule == "tls-pinned"
    assert book.give() is None  # no refusal written: the agent's side is broken TLS
