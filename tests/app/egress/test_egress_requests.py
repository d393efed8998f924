"""What a request asks for, by table: tunnels, absolute-form, routes, and every ambiguity
that is refused rather than resolved."""

from __future__ import annotations

import pytest

from app.egress.keys import check_value
from app.egress.requests import (
    Kind,
    Refusal,
    Target,
    classify,
    credential_header,
    redact_path,
    refusal_response,
    upstream_headers,
)
from app.errors import EgressError
from app.profiles import Route

ROUTES = (
    Route(name="llm", upstream="https://api.example.com/v1", secret="llm-key"),
    Route(
        name="plain",
        upstream="http://svc.example.net:8080",
        secret="s",
        header="X-Api-Key: {secret}",
    ),
)
OWN = frozenset({"127.0.0.1:3128"})


def host(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", value.encode())]


@pytest.mark.parametrize(
    ("method", "target", "headers", "expected"),
    [
        (
            "CONNECT",
            "api.example.com:443",
            host("api.example.com:443"),
            Target(Kind.TUNNEL, "CONNECT", "api.example.com", 443, ""),
        ),
        ("CONNECT", "[::1]:443", [], Target(Kind.TUNNEL, "CONNECT", "[::1]", 443, "")),
        ("CONNECT", "api.example.com", [], Refusal(400, "bad-request", "")),
        ("CONNECT", "api.example.com:99999", [], Refusal(400, "bad-request", "")),
        ("CONNECT", "a@b:443", [], Refusal(400, "bad-request", "")),
        (
            "GET",
            "http://files.example.net/a/b?x=1",
            host("files.example.net"),
            Target(Kind.FORWARD, "GET", "files.example.net", 80, "/a/b?x=1"),
        ),
        (
            "GET",
            "http://files.example.net:8080",
            host("files.example.net:8080"),
            Target(Kind.FORWARD, "GET", "files.example.net", 8080, "/"),
        ),
        (
            "GET",
            "http://files.example.net?q=1",
            host("files.example.net"),
            Target(Kind.FORWARD, "GET", "files.example.net", 80, "/?q=1"),
        ),
        (
            "GET",
            "http://files.example.net/",
            host("FILES.example.net:80"),
            Target(Kind.FORWARD, "GET", "files.example.net", 80, "/"),
        ),
        (
            "GET",
            "http://allowed.example@denied.example/",
            host("denied.example"),
            Refusal(400, "bad-request", ""),
        ),
        (
            "GET",
            "http://allowed.example/",
            host("denied.example"),
            Refusal(400, "host-mismatch", ""),
        ),
        (
            "GET",
            "http://allowed.example/",
            host("allowed.example") + host("denied.example"),
            Refusal(400, "host-mismatch", ""),
        ),
        ("GET", "http://allowed.example/", [], Refusal(400, "host-mismatch", "")),
        (
            "GET",
            "http://allowed.example/#frag",
            host("allowed.example"),
            Refusal(400, "bad-request", ""),
        ),
        (
            "GET",
            "https://allowed.example/",
            host("allowed.example"),
            Refusal(400, "bad-request", ""),
        ),
        ("GET", "ftp://allowed.example/", host("allowed.example"), Refusal(400, "bad-request", "")),
        ("GET", "/index.html", host("allowed.example"), Refusal(400, "bad-request", "")),
        (
            "POST",
            "http://a.example/",
            [*host("a.example"), (b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            Refusal(400, "bad-request", ""),
        ),
        (
            "POST",
            "/routes/llm/chat/completions?stream=1",
            host("127.0.0.1:3128"),
            Target(
                Kind.ROUTE,
                "POST",
                "api.example.com",
                443,
                "/v1/chat/completions?stream=1",
                tls=True,
                route=ROUTES[0],
            ),
        ),
        (
            "GET",
            "/routes/llm",
            host("127.0.0.1:3128"),
            Target(Kind.ROUTE, "GET", "api.example.com", 443, "/v1", tls=True, route=ROUTES[0]),
        ),
        (
            "GET",
            "/routes/plain/x",
            [],
            Target(Kind.ROUTE, "GET", "svc.example.net", 8080, "/x", route=ROUTES[1]),
        ),
        (
            "GET",
            "http://127.0.0.1:3128/routes/llm/models",
            host("127.0.0.1:3128"),
            Target(
                Kind.ROUTE, "GET", "api.example.com", 443, "/v1/models", tls=True, route=ROUTES[0]
            ),
        ),
        ("GET", "/routes/nope/x", [], Refusal(404, "no-route", "")),
        ("GET", "/routes/llm/../admin", [], Refusal(400, "bad-request", "")),
        ("GET", "/routes/llm/%2e%2e/admin", [], Refusal(400, "bad-request", "")),
    ],
)
def test_classify(
    method: str, target: str, headers: list[tuple[bytes, bytes]], expected: Target | Refusal
) -> None:
    result = classify(method.encode(), target.encode(), headers, ROUTES, OWN)
    if isinstance(expected, Refusal):
        assert isinstance(result, Refusal), result
        assert (result.status, result.rule) == (expected.status, expected.rule)
    else:
        assert result == expected


def test_upstream_headers_drop_hop_by_hop_and_replace_the_credential() -> None:
    headers = [
        (b"Host", b"127.0.0.1:3128"),
        (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"X-Secret-Hop", b"1"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"authorization", b"Bearer placeholder"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"3"),
        (b"Expect", b"100-continue"),
        (b"Accept-Encoding", b"gzip"),
    ]
    credential = credential_header(ROUTES[0], "sk-real")
    out = upstream_headers(headers, "api.example.com", 443, 443, credential)
    assert out == [
        (b"host", b"api.example.com"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"3"),
        (b"accept-encoding", b"identity"),
        (b"Authorization", b"Bearer sk-real"),
    ]  # an echo must stay maskable
    assert upstream_headers([], "h.example", 8080, 80)[0] == (b"host", b"h.example:8080")


def test_a_secret_with_a_newline_cannot_add_headers() -> None:
    with pytest.raises(ValueError, match="control characters"):
        credential_header(ROUTES[0], "sk\r\nX-Evil: 1")


@pytest.mark.parametrize("secret", ["sk-trailing ", " sk-leading", "sk-\u20ac-not-latin-1"])
def test_a_secret_no_header_can_carry_is_refused_without_being_quoted(secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        credential_header(ROUTES[0], secret)
    assert secret.strip() not in str(refused.value)
    assert "store it again with `airlock secret set" in str(refused.value)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/a/b", "/a/b"),
        ("/s?q=secret&page=2", "/s?q=…&page=…"),
        ("/s?flag", "/s?flag"),
    ],
)
def test_redact_path(path: str, logged: str) -> None:
    assert redact_path(path) == logged


def test_refusal_response_is_readable_and_header_safe() -> None:
    raw = refusal_response(403, "not-listed", "evil.example\r\nSet-Cookie: x is not listed")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"X-Airlock-Refused: evil.example??Set-Cookie: x is not listed" in head
    assert b"\r\nSet-Cookie" not in head
    assert b"Connection: close" in head and body.startswith(b"airlock: refused (not-listed)")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("sk-1\n2", "control characters"),
        ("sk-pasted ", "starts or ends with a space"),
        ("\tsk", "control characters"),
        ("sk-\u20ac", "not Latin-1"),
    ],
)
def test_secret_set_refuses_what_no_header_can_carry(value: str, reason: str) -> None:
    with pytest.raises(EgressError, match=reason):
        check_value(value)
    assert check_value("sk-fine-123") == "sk-fine-123"
