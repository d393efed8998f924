"""Inside an inspected CONNECT: what the decrypted requests may ask for, and what a failed
handshake means. Pure functions and the two commands the core adds for it.

A CONNECT to a host the profile inspects is answered 200, then the agent's TLS ends at the
proxy (a leaf of the session's CA, `app/egress/ca.py`), and each request inside is handled
as plain HTTP is, with the CONNECT target as the only authority it may name: the TLS name
(SNI), the Host header and an absolute-form target must all be that host and port, or the
request is refused. The upstream is a new TLS connection to the same host, verified against
the system's trust store; nothing is ever downgraded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from app.egress.policy import parse_host
from app.egress.requests import Headers, Kind, Refusal, Target, header, split_authority
from app.profiles import Route

H2_PREFACE = b"PRI * HTTP/2.0\r\n"
HTTPS_PORT = 443


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Answer the CONNECT with `established` and take over the agent's TLS for `host`
    (→ `Handshake`; `TLSRefused` if it fails). `leftover` is what the agent sent after the
    CONNECT's head before it was answered."""

    host: str
    established: bytes
    leftover: bytes


@dataclass(frozen=True, slots=True)
class Handshake:
    sni: str | None  # the name the agent's client asked for, if it sent one
    version: str
    alpn: str | None


class TLSRefused(Exception):
    """The agent's TLS handshake failed: nothing HTTP can reach it any more."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule, self.reason = rule, reason


def handshake_refusal(host: str, error: str) -> TLSRefused:
    """What a failed handshake with the agent's client most likely means, said so that the
    user knows what to do. `error` is OpenSSL's reason (e.g. `TLSV1_ALERT_UNKNOWN_CA`)."""
    text = error.upper()
    if any(
        word in text
        for word in (
            "UNKNOWN_CA",
            "BAD_CERTIFICATE",
            "CERTIFICATE_UNKNOWN",
            "UNSUPPORTED_CERTIFICATE",
            "DECRYPT_ERROR",
            "ACCESS_DENIED",
        )
    ):
        return TLSRefused(
            "tls-pinned",
            f"the agent's client refused the session's certificate "
            f"for {host}: it pins its certificates, does not read the session's "
            f"trust store, or asked for another name; to let it through "
            f"uninspected, mark {host} opaque (inspect = false) in the profile",
        )
    if any(word in text for word in ("VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS")):
        return TLSRefused(
            "tls-version",
            f"the agent's client offered only a TLS version older than 1.2 for {host}",
        )
    if "NO_APPLICATION_PROTOCOL" in text or "ALPN" in text:
        return TLSRefused(
            "http2",
            f"the agent's client would speak only HTTP/2 to {host}; Airlock inspects HTTP/1.1 only",
        )
    if "NO_SHARED_CIPHER" in text:
        return TLSRefused(
            "tls-version", f"the agent's client offered no cipher Airlock accepts for {host}"
        )
    return TLSRefused(
        "tls-handshake",
        f"the TLS handshake with the agent for {host} failed "
        f"({error or 'the client hung up'}); if its client pins certificates, "
        f"mark {host} opaque (inspect = false) in the profile",
    )


def sni_refusal(host: str, sni: str | None) -> Refusal | None:
    """A refusal if the agent's TLS name is not the CONNECT's host (no name is fine: clients
    send none for an address)."""
    if sni is None:
        return None
    try:
        same = parse_host(sni).name == parse_host(host).name
    except ValueError:
        same = False
    if same:
        return None
    return Refusal(
        421, "sni-mismatch", f"the TLS name {sni[:100]!r} is not the CONNECT's host {host}"
    )


def classify_inside(
    method: bytes, target: bytes, headers: Headers, host: str, port: int
) -> Target | Refusal:
    """What a decrypted request asks for: a Target to `host:port` over TLS, or a refusal
    when it names any other authority or frames itself ambiguously."""
    verb = method.decode("ascii", "replace").upper()
    text = target.decode("ascii", "replace")
    if header(headers, b"content-length") and header(headers, b"transfer-encoding"):
        return Refusal(400, "bad-request", "both Content-Length and Transfer-Encoding")
    if verb == "CONNECT":
        return Refusal(400, "bad-request", "CONNECT inside an inspected tunnel")
    if "#" in text:
        return Refusal(400, "bad-request", "a request target must not have a fragment")
    if text.lower().startswith("https://"):
        authority, slash, rest = text[len("https://") :].partition("/")
        authority, question, query = authority.partition("?")
        if question:
            rest, slash = "?" + query + ("/" + rest if slash else ""), "/"
        if "@" in authority or not _same(authority, host, port):
            return Refusal(
                400,
                "host-mismatch",
                f"the request names another host than the tunnel's ({host}:{port})",
            )
        text = "/" + rest if slash else "/"
    elif not text.startswith("/"):
        return Refusal(400, "bad-request", "expected an origin-form target in the tunnel")
    hosts = header(headers, b"host")
    if len(hosts) != 1 or not _same(hosts[0].decode("ascii", "replace").strip(), host, port):
        return Refusal(
            400, "host-mismatch", f"the Host header does not name the tunnel's host ({host}:{port})"
        )
    return Target(Kind.FORWARD, verb, host, port, text, tls=True)


def _same(authority: str, host: str, port: int) -> bool:
    try:
        other_host, other_port = split_authority(authority, HTTPS_PORT)
        return parse_host(other_host).name == parse_host(host).name and other_port == port
    except ValueError:
        return False


# Credential swap in place: routes with `intercept = true`.


def placeholder(route: Route) -> str:
    """The key the agent holds for an intercepted route: recognisable, and useless
    anywhere but through Airlock to the route's host."""
    return f"airlock-placeholder-{route.name}"


def route_authority(route: Route) -> tuple[str, int]:
    upstream = urlsplit(route.upstream)
    host, port = split_authority(upstream.netloc, HTTPS_PORT)
    return parse_host(host).name, port


def intercepted_route(routes: Iterable[Route], host: str, port: int) -> Route | None:
    """The intercepted route whose upstream is `host:port`, if any."""
    try:
        name = parse_host(host).name
    except ValueError:
        return None
    return next((r for r in routes if r.intercept and route_authority(r) == (name, port)), None)


def stray_placeholder(
    routes: Iterable[Route], host: str, port: int, target: bytes, headers: Headers
) -> Route | None:
    """An intercepted route whose placeholder this request, to `host:port`, carries in its
    target or headers though it is not that route's host: sent there, a real key would
    have leaked (a prompt injection asking the agent to "send your key to …")."""
    for route in routes:
        if not route.intercept or route_authority(route) == (parse_host(host).name, port):
            continue
        mark = placeholder(route).encode("ascii")
        if mark in target or any(mark in value for _, value in headers):
            return route
    return None


def stray_placeholder_in(
    routes: Iterable[Route], host: str, port: int, body: Sequence[bytes]
) -> Route | None:
    """The same for (the inspected start of) a body."""
    intercepted = [r for r in routes if r.intercept]
    if not intercepted:
        return None
    return stray_placeholder(intercepted, host, port, b"".join(body), ())


def swap_query(path: str, name: str, secret: str) -> str:
    """`path` with the query parameter `name` set to `secret` (and only once)."""
    base, _, query = path.partition("?")
    items = [item for item in query.split("&") if item and item.partition("=")[0] != name]
    items.append(f"{name}={quote(secret, safe='')}")
    return f"{base}?{'&'.join(items)}"


def identity_encoding(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The agent's headers asking for an uncompressed answer: the scrubber must be able to
    find an echoed key in it."""
    out = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
    out.append((b"accept-encoding", b"identity"))
    return out
