"""Where may the agent connect: a pure decision over the profile's network rules.

The decision runs twice for each destination. First on the name alone (`addresses=None`):
a name the profile does not list is refused *before* it is resolved, because a DNS query for
an attacker-chosen name is itself a channel out (`secret.evil.example`). Then, once the proxy
has resolved an allowed name, on the addresses: a listed name that resolves to loopback,
private, link-local or otherwise non-public space is refused unless the profile says
`allow_private` — that is the DNS-rebinding defence. The proxy connects to exactly the
addresses checked here; nothing resolves the name a second time.

IP literals. An address in the request target is refused unless a rule lists exactly that
address. Numeric forms other than the canonical dotted quad (`2130706433`, `0x7f.1`,
`0177.0.0.1`, `127.1`) are refused outright: they exist only to slip past filters, and C
resolvers read them as addresses. IPv6 literals cannot be written in a rule, so they are
always refused.

Matching: `api.example.com` matches only itself; `*.example.com` matches any name below
`example.com` (at any depth) but not `example.com` itself. Rules are tried in order, `allow`
before `ask`; the first whose host, port and method fit decides.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.egress.paths import path_fits, path_only
from app.profiles import HostRule, Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# What inet_aton(3) and the WHATWG URL parser read as a number: a label of digits or hex.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do, which rule said so (shown in the log and to the agent), and why."""

    action: Action
    rule: str
    reason: str
    inspect: bool = False  # a CONNECT whose HTTPS the proxy decrypts and decides inside

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW


@dataclass(frozen=True, slots=True)
class Host:
    """A validated destination host: a lower-case name, or an address literal."""

    name: str
    address: IPAddress | None = None
    canonical: bool = True  # False for numeric forms other than the dotted quad


def parse_host(raw: str) -> Host:
    """The host of a request target or CONNECT authority (without port), validated.
    Raises ValueError with the reason for anything that is not a plain DNS name or a literal."""
    text = raw.strip()
    if not text or text != raw:
        raise ValueError("empty or padded host")
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        if "%" in inner:
            raise ValueError("IPv6 zone identifiers are not allowed")
        try:
            return Host(inner.lower(), ipaddress.IPv6Address(inner))
        except ValueError as e:
            raise ValueError(f"invalid IPv6 literal {text!r}") from e
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        raise ValueError("non-ASCII host (send IDNA names in their xn-- form)")
    if len(name) > 253:
        raise ValueError("host name longer than 253 characters")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            return Host(name, ipaddress.IPv4Address(name))
        except ValueError:
            return Host(name, None, canonical=False)
    if ":" in name:
        raise ValueError("IPv6 literals must be in brackets")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {raw!r}")
    return Host(name)


def host_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def _rule_fits(rule: HostRule, host: Host) -> bool:
    if host.address is not None:
        # A literal matches only a rule naming that exact address, never a wildcard.
        return not rule.host.startswith("*.") and rule.host == host.name
    return host_matches(rule.host, host.name)


def _method_fits(rule: HostRule, method: str, inspect: bool) -> bool:
    if method == "CONNECT" and inspect:
        return True  # methods and paths are decided on each request inside
    if method == "CONNECT" and rule.paths:
        return False  # an opaque tunnel shows no path to check
    return not rule.methods or method in rule.methods


def describe(section: str, index: int, rule: HostRule) -> str:
    ports = ",".join(str(p) for p in rule.ports)
    methods = f" {','.join(rule.methods)}" if rule.methods else ""
    return f"{section}[{index}] {rule.host}:{ports}{methods}"


def address_class(address: IPAddress) -> str | None:
    """Why an address is not a public destination, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return address_class(embedded)
        if address in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64 reaches IPv4 space
            return address_class(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def decide_destination(
    network: Network,
    host: str,
    port: int,
    method: str,
    addresses: Sequence[IPAddress] | None = None,
    path: str | None = None,
) -> Decision:
    """Allow, deny or ask for `method` to `host:port` (and `path`, for rules that name
    paths); with `addresses`, also judge what the name resolved to. `host` is the raw host
    text from the request."""
    try:
        parsed = parse_host(host)
    except ValueError as e:
        return Decision(Action.DENY, "invalid-host", str(e))
    if not parsed.canonical:
        return Decision(
            Action.DENY, "ip-literal", f"{host} is a numeric address in a non-canonical form"
        )
    if not 0 < port < 65536:
        return Decision(Action.DENY, "invalid-port", f"port {port} is out of range")
    decision = _by_rules(network, parsed, port, method, path)
    if decision.action is Action.DENY or addresses is None:
        return decision
    refused = address_refusal(network, parsed, addresses)
    return refused or decision


def address_refusal(
    network: Network, host: Host, addresses: Sequence[IPAddress]
) -> Decision | None:
    """A refusal if `host` resolved to nothing or to a non-public address the profile does
    not allow (a literal the profile lists by address counts as allowed), else None."""
    if not addresses:
        return Decision(Action.DENY, "unresolved", f"{host.name} did not resolve")
    for address in addresses:
        kind = address_class(address)
        if kind in ("unspecified", "multicast"):
            return Decision(Action.DENY, "address", f"{host.name} resolves to {address} ({kind})")
        if kind is not None and not (network.allow_private or host.address is not None):
            return Decision(
                Action.DENY,
                "private-address",
                f"{host.name} resolves to {address} ({kind}); the profile does "
                "not allow private destinations",
            )
    return None


def _by_rules(network: Network, host: Host, port: int, method: str, path: str | None) -> Decision:
    near_miss: str | None = None
    for section, rules, action in (
        ("allow", network.allow, Action.ALLOW),
        ("ask", network.ask, Action.ASK),
    ):
        for index, rule in enumerate(rules):
            if not _rule_fits(rule, host):
                continue
            if port not in rule.ports:
                near_miss = near_miss or f"port {port} is not allowed for {host.name}"
                continue
            inspect = network.inspect if rule.inspect is None else rule.inspect
            if not _method_fits(rule, method, inspect):
                near_miss = near_miss or (
                    f"{host.name} allows only some paths, which an opaque tunnel does not "
                    "show (set inspect = true)"
                    if method == "CONNECT" and rule.methods == ()
                    else f"method {method} is not allowed for {host.name}"
                )
                continue
            if path is not None and not path_fits(rule.paths, path):
                near_miss = near_miss or f"path {path_only(path)} is not allowed for {host.name}"
                continue
            return Decision(
                action,
                describe(section, index, rule),
                f"{host.name}:{port} is listed",
                inspect=inspect,
            )
    if host.address is not None:
        return Decision(
            Action.DENY, "ip-literal", f"{host.name} is an IP address the profile does not list"
        )
    return Decision(
        Action.DENY, "not-listed", near_miss or f"{host.name} is not in the profile's network rules"
    )


def destination_key(network: Network, host: str, port: int) -> tuple[str, str]:
    """Whom the data of a request to `host:port` goes to, as the ledger counts it, and the
    part of the name that is the agent's choice: for a name only a wildcard rule lists, the
    rule's pattern and the labels in front of its suffix (`<data>.example.com` under
    `*.example.com` is a DNS-shaped channel); for any other, `host:port` and ""."""
    try:
        parsed = parse_host(host)
    except ValueError:
        return f"{host}:{port}", ""
    wildcard = ""
    for rule in (*network.allow, *network.ask):
        if port not in rule.ports or not _rule_fits(rule, parsed):
            continue
        if not rule.host.startswith("*."):
            return f"{parsed.name}:{port}", ""
        wildcard = wildcard or rule.host
    if not wildcard:
        return f"{parsed.name}:{port}", ""
    return f"{wildcard}:{port}", parsed.name[: -len(wildcard) + 1]
