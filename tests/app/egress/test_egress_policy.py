"""The destination policy, by table: names, wildcards, ports, methods, literals, addresses."""

from __future__ import annotations

import ipaddress

import pytest

from app.egress.policy import (
    Action,
    address_class,
    decide_destination,
    destination_key,
    parse_host,
)
from app.profiles import Network, parse_profile

NETWORK = Network.model_validate(
    {
        "allow": [
            "api.example.com",
            "*.cdn.example.org:443",
            "files.example.net:80",
            {"host": "ro.example.com", "ports": [80], "methods": ["GET", "HEAD"]},
            "127.0.0.1:8080",
        ],
        "ask": ["upload.example.com"],
    }
)
PRIVATE = Network.model_validate(
    {"allow": ["localhost:8080", "api.example.com"], "allow_private": True}
)
PUBLIC = [ipaddress.ip_address("93.184.216.34")]
LOOP = [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize(
    ("host", "port", "method", "action", "rule"),
    [
        ("api.example.com", 443, "CONNECT", Action.ALLOW, "allow[0] api.example.com:443"),
        ("API.Example.com.", 443, "CONNECT", Action.ALLOW, "allow[0] api.example.com:443"),
        ("api.example.com", 80, "GET", Action.DENY, "not-listed"),
        ("evil.api.example.com", 443, "CONNECT", Action.DENY, "not-listed"),
        ("a.cdn.example.org", 443, "CONNECT", Action.ALLOW, "allow[1] *.cdn.example.org:443"),
        ("a.b.cdn.example.org", 443, "CONNECT", Action.ALLOW, "allow[1] *.cdn.example.org:443"),
        ("cdn.example.org", 443, "CONNECT", Action.DENY, "not-listed"),
        ("xcdn.example.org", 443, "CONNECT", Action.DENY, "not-listed"),
        ("files.example.net", 80, "POST", Action.ALLOW, "allow[2] files.example.net:80"),
        ("ro.example.com", 80, "GET", Action.ALLOW, "allow[3] ro.example.com:80 GET,HEAD"),
        ("ro.example.com", 80, "POST", Action.DENY, "not-listed"),
        ("ro.example.com", 80, "CONNECT", Action.DENY, "not-listed"),
        ("upload.example.com", 443, "CONNECT", Action.ASK, "ask[0] upload.example.com:443"),
        ("127.0.0.1", 8080, "GET", Action.ALLOW, "allow[4] 127.0.0.1:8080"),
        ("127.0.0.1", 80, "GET", Action.DENY, "ip-literal"),
        ("93.184.216.34", 443, "CONNECT", Action.DENY, "ip-literal"),
        ("2130706433", 8080, "GET", Action.DENY, "ip-literal"),
        ("0x7f000001", 8080, "GET", Action.DENY, "ip-literal"),
        ("0177.0.0.1", 8080, "GET", Action.DENY, "ip-literal"),
        ("127.1", 8080, "GET", Action.DENY, "ip-literal"),
        ("foo.123", 443, "GET", Action.DENY, "ip-literal"),
        ("[::1]", 443, "CONNECT", Action.DENY, "ip-literal"),
        ("[::ffff:127.0.0.1]", 8080, "CONNECT", Action.DENY, "ip-literal"),
        ("[fe80::1%25eth0]", 443, "CONNECT", Action.DENY, "invalid-host"),
        ("::1", 443, "CONNECT", Action.DENY, "invalid-host"),
        ("exa mple.com", 443, "CONNECT", Action.DENY, "invalid-host"),
        ("bücher.example.com", 443, "CONNECT", Action.DENY, "invalid-host"),
        ("", 443, "CONNECT", Action.DENY, "invalid-host"),
        ("api.example.com", 0, "CONNECT", Action.DENY, "invalid-port"),
    ],
)
def test_decision_by_name(host: str, port: int, method: str, action: Action, rule: str) -> None:
    decision = decide_destination(NETWORK, host, port, method)
    assert (decision.action, decision.rule) == (action, rule), decision.reason


@pytest.mark.parametrize(
    ("network", "host", "addresses", "action", "rule"),
    [
        (NETWORK, "api.example.com", PUBLIC, Action.ALLOW, "allow[0] api.example.com:443"),
        (NETWORK, "api.example.com", LOOP, Action.DENY, "private-address"),  # rebinding
        (NETWORK, "api.example.com", [*PUBLIC, *LOOP], Action.DENY, "private-address"),
        (
            NETWORK,
            "api.example.com",
            [ipaddress.ip_address("10.1.2.3")],
            Action.DENY,
            "private-address",
        ),
        (
            NETWORK,
            "api.example.com",
            [ipaddress.ip_address("169.254.169.254")],
            Action.DENY,
            "private-address",
        ),
        (
            NETWORK,
            "api.example.com",
            [ipaddress.ip_address("::ffff:127.0.0.1")],
            Action.DENY,
            "private-address",
        ),
        (
            NETWORK,
            "api.example.com",
            [ipaddress.ip_address("64:ff9b::a00:1")],
            Action.DENY,
            "private-address",
        ),
        (
            NETWORK,
            "api.example.com",
            [ipaddress.ip_address("2002:7f00:1::")],
            Action.DENY,
            "private-address",
        ),
        (NETWORK, "api.example.com", [], Action.DENY, "unresolved"),
        (PRIVATE, "api.example.com", LOOP, Action.ALLOW, "allow[1] api.example.com:443"),
        (PRIVATE, "api.example.com", [ipaddress.ip_address("0.0.0.0")], Action.DENY, "address"),
        (PRIVATE, "api.example.com", [ipaddress.ip_address("224.0.0.1")], Action.DENY, "address"),
    ],
)
def test_decision_by_address(
    network: Network, host: str, addresses: list[ipaddress.IPv4Address], action: Action, rule: str
) -> None:
    decision = decide_destination(network, host, 443, "CONNECT", addresses)
    assert (decision.action, decision.rule) == (action, rule), decision.reason


def test_localhost_is_refused_after_resolution_unless_private_is_allowed() -> None:
    strict = Network.model_validate({"allow": ["localhost:8080"]})
    assert decide_destination(strict, "localhost", 8080, "GET").action is Action.ALLOW
    assert decide_destination(strict, "localhost", 8080, "GET", LOOP).rule == "private-address"
    assert decide_destination(PRIVATE, "localhost", 8080, "GET", LOOP).action is Action.ALLOW


@pytest.mark.parametrize(
    ("text", "name", "literal", "canonical"),
    [
        ("Example.COM", "example.com", False, True),
        ("1.2.3.4", "1.2.3.4", True, True),
        ("01.2.3.4", "01.2.3.4", False, False),
        ("[2001:db8::1]", "2001:db8::1", True, True),
        ("under_score.example", "under_score.example", False, True),
    ],
)
def test_parse_host(text: str, name: str, literal: bool, canonical: bool) -> None:
    host = parse_host(text)
    assert (host.name, host.address is not None, host.canonical) == (name, literal, canonical)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("127.0.0.2", "loopback"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "reserved"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("2606:4700::1111", None),
        ("::", "unspecified"),
    ],
)
def test_address_class(address: str, kind: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("host", "port", "key"),
    [
        ("api.example.com", 443, ("api.example.com:443", "")),  # listed by name
        ("abc.cdn.example", 443, ("*.cdn.example:443", "abc")),
        ("a.b.cdn.example", 443, ("*.cdn.example:443", "a.b")),
        ("x.api.example.com", 443, ("*.api.example.com:443", "x")),
        ("api.example.com", 8443, ("api.example.com:8443", "")),  # no rule for the port
    ],
)
def test_the_destination_a_ledger_counts_and_the_labels_a_wildcard_leaves_open(
    host: str, port: int, key: tuple[str, str]
) -> None:
    network = parse_profile(
        'name = "t"\nimage = "i"\n[network]\n'
        'allow = ["api.example.com:443", "*.cdn.example:443", "*.api.example.com:443"]\n',
        "t.toml",
    ).network
    assert destination_key(network, host, port) == key
