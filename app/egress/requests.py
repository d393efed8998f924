"""What a parsed HTTP request asks the proxy for, and how it is rewritten for the upstream.

Pure functions over what h11 parsed, so every refusal is tested by table. The proxy accepts:

- `CONNECT host:port` — an opaque tunnel (HTTPS), unless the profile inspects the host
  (then the requests inside are classified by `interception.classify_inside`).
- absolute-form `http://host[:port]/path` — plain HTTP, forwarded by the proxy.
- origin-form `/routes/NAME/rest` (or absolute-form to the proxy's own address, for clients
  that ignore NO_PROXY) — a credential route, forwarded to the route's upstream.

Everything else is a clear refusal. Ambiguity is refused rather than resolved, because an
upstream that resolves it differently is how smuggling works: a URL with user info
(`http://allowed@denied/`), a Host header that names another host than the target, both
Content-Length and Transfer-Encoding, dot segments in a route path, fragments.

Upstream requests are re-framed: hop-by-hop headers (and those named in Connection) are
dropped, Host is set from the target, and h11 writes the framing itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from app.egress.policy import parse_host
from app.profiles import Route

Headers = Sequence[tuple[bytes, bytes]]

ROUTES_PREFIX = "/routes/"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
_PORT = re.compile(r":[0-9]{1,5}")


class Kind(StrEnum):
    FORWARD = "forward"
    TUNNEL = "tunnel"
    ROUTE = "route"


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes. `path` is the origin-form target sent upstream; `host` is
    the raw host text (bracketless for IPv6 literals is *not* applied: policy parses it)."""

    kind: Kind
    method: str
    host: str
    port: int
    path: str
    tls: bool = False
    route: Route | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    rule: str
    reason: str


def header(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, or a bare host where a default port applies."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ValueError(f"invalid authority {authority!r}")
        host, rest = authority[: close + 1], authority[close + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if not host:
        raise ValueError(f"invalid authority {authority!r}")
    if not rest:
        if default_port is None:
            raise ValueError("a port is required")
        return host, default_port
    if not _PORT.fullmatch(rest):
        raise ValueError(f"invalid port in {authority!r}")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


def classify(
    method: bytes,
    target: bytes,
    headers: Headers,
    routes: Iterable[Route],
    own_authorities: frozenset[str] = frozenset(),
) -> Target | Refusal:
    """What the request asks for. `own_authorities` are the names of the proxy itself
    (`127.0.0.1:3128`) that absolute-form route requests may use."""
    verb = method.decode("ascii", "replace").upper()
    text = target.decode("ascii", "replace")
    if header(headers, b"content-length") and header(headers, b"transfer-encoding"):
        return Refusal(400, "bad-request", "both Content-Length and Transfer-Encoding")
    if verb == "CONNECT":
        try:
            host, port = split_authority(text, None)
            parse_host(host)
        except ValueError as e:
            return Refusal(400, "bad-request", f"CONNECT needs host:port ({e})")
        return Target(Kind.TUNNEL, verb, host, port, "")
    if "#" in text:
        return Refusal(400, "bad-request", "a request target must not have a fragment")
    if text.startswith("/"):
        return _route(verb, text, routes)
    if not text.lower().startswith("http://"):
        if text.lower().startswith("https://"):
            return Refusal(400, "bad-request", "send HTTPS through CONNECT")
        return Refusal(400, "bad-request", "expected an absolute http:// URL or CONNECT")
    authority, slash, rest = text[len("http://") :].partition("/")
    authority, question, query = authority.partition("?")
    if question:  # `http://host?q`: the query belongs to an empty path
        rest, slash = "?" + query + ("/" + rest if slash else ""), "/"
    if "@" in authority:
        return Refusal(400, "bad-request", "credentials in the URL are refused")
    try:
        host, port = split_authority(authority, 80)
        parse_host(host)
    except ValueError as e:
        return Refusal(400, "bad-request", str(e))
    path = "/" + rest if slash else "/"
    if path.startswith("/?"):
        path = "/" + path[1:]
    hosts = header(headers, b"host")
    if len(hosts) != 1 or not _same_authority(hosts[0].decode("ascii", "replace"), host, port):
        return Refusal(400, "host-mismatch", "the Host header does not match the request target")
    if f"{host.lower()}:{port}" in own_authorities and path.startswith(ROUTES_PREFIX):
        return _route(verb, path, routes)
    return Target(Kind.FORWARD, verb, host, port, path)


def _same_authority(value: str, host: str, port: int) -> bool:
    try:
        other_host, other_port = split_authority(value.strip(), 80)
    except ValueError:
        return False
    return other_host.lower().rstrip(".") == host.lower().rstrip(".") and other_port == port


def _route(verb: str, text: str, routes: Iterable[Route]) -> Target | Refusal:
    if not text.startswith(ROUTES_PREFIX):
        return Refusal(
            400,
            "bad-request",
            "this is a proxy: send an absolute http:// URL, CONNECT, or /routes/NAME/",
        )
    name, _, rest = text[len(ROUTES_PREFIX) :].partition("/")
    name, question, query = name.partition("?")
    route = next((r for r in routes if r.name == name), None)
    if route is None:
        return Refusal(404, "no-route", f"no route named {name!r} in the profile")
    path, _, query2 = ("/" + rest).partition("?")
    query = query or query2
    segments = unquote(path).replace("\\", "/").split("/")
    if any(s in (".", "..") for s in segments):
        return Refusal(400, "bad-request", "dot segments are not allowed in a route path")
    upstream = urlsplit(route.upstream)
    base = upstream.path.rstrip("/")
    full = base + (path if path != "/" or not base else "")
    if not full:
        full = "/"
    if query or question:
        full += "?" + query
    tls = upstream.scheme == "https"
    host, port = split_authority(upstream.netloc, 443 if tls else 80)
    return Target(Kind.ROUTE, verb, host, port, full, tls=tls, route=route)


def upstream_headers(
    headers: Headers,
    host: str,
    port: int,
    default_port: int,
    credential: tuple[str, str] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream gets them: hop-by-hop ones and framing dropped,
    Host from the target, and for a route any client header of the credential's name replaced
    by the real credential. Content-Length is kept: h11 checks the body against it."""
    named = {v.strip().lower() for v in b",".join(header(headers, b"connection")).split(b",")}
    drop = HOP_BY_HOP | named | {b"host"}
    if credential is not None:
        # And no compression: an echoed credential is masked in what comes back, which
        # it cannot be once compressed.
        drop = drop | {credential[0].lower().encode("ascii"), b"accept-encoding"}
    out = [(b"host", (host if port == default_port else f"{host}:{port}").encode("ascii"))]
    out += [(k, v) for k, v in headers if k.lower() not in drop]
    if credential is not None:
        out.append((b"accept-encoding", b"identity"))
        out.append((credential[0].encode("ascii"), credential[1].encode("latin-1")))
    return out


def client_headers(
    headers: Headers, extra: Mapping[bytes, bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """An upstream response's headers as the client gets them: hop-by-hop ones dropped."""
    named = {v.strip().lower() for v in b",".join(header(headers, b"connection")).split(b",")}
    drop = HOP_BY_HOP | named
    out = [(k, v) for k, v in headers if k.lower() not in drop]
    out += list((extra or {}).items())
    return out


def credential_header(route: Route, secret: str) -> tuple[str, str]:
    """The header a route adds: its template with `{secret}` filled in."""
    name, _, template = route.header.partition(":")
    value = template.strip().replace("{secret}", secret)
    # What h11 would refuse (quoting the value in its error): checked here, and said
    # without the value.
    if (
        any(ord(c) < 32 or ord(c) == 127 or ord(c) > 255 for c in value)
        or value != value.strip(" \t")
        or secret != secret.strip()
    ):
        raise ValueError(
            "the stored secret cannot go in an HTTP header (control characters, "
            "surrounding spaces or characters outside Latin-1): store it again "
            f"with `airlock secret set {route.secret}`"
        )
    return name.strip(), value


def redact_path(path: str) -> str:
    """A path for the log: query values replaced by `…`, so tokens in URLs stay out."""
    base, question, query = path.partition("?")
    if not question:
        return base
    parts = []
    for item in query.split("&"):
        key, equals, _ = item.partition("=")
        parts.append(f"{key}=…" if equals else key)
    return f"{base}?{'&'.join(parts)}"


def has_body(headers: Headers) -> bool:
    if header(headers, b"transfer-encoding"):
        return True
    lengths = header(headers, b"content-length")
    return bool(lengths) and lengths[0].strip() not in (b"0", b"")


def content_length(headers: Headers) -> int | None:
    lengths = header(headers, b"content-length")
    if not lengths or not lengths[0].strip().isdigit():
        return None
    return int(lengths[0])


REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
REFUSED_HEADER = "X-Airlock-Refused"
RULE_HEADER = "X-Airlock-Rule"


def header_safe(text: str, limit: int = 300) -> str:
    """Text that may go into a header value: printable ASCII only."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text[:limit])


def refusal_response(status: int, rule: str, reason: str) -> bytes:
    """A complete response the agent can read: the status, the reason in a header and in
    the body, and `Connection: close` — a refused connection is never reused. Written by
    hand because it must also go out where h11's state machine has no response to send
    (a head that never finished arriving)."""
    why = header_safe(reason)
    body = f"airlock: refused ({header_safe(rule, 100)}): {why}\n".encode("ascii")
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Refused')}\r\n"
        f"{REFUSED_HEADER}: {why}\r\n"
        f"{RULE_HEADER}: {header_safe(rule, 100)}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
