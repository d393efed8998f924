"""The sidecar's witness (`profiles/agents/airlock_netlog.py`) on crafted packets: what it
reports, what it answers (checksums a kernel accepts), what it refuses to read, and how it
limits a flood. Its privileged set-up is exercised in a real container by
tests/ui/test_egress_escapes.py."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import struct
from types import ModuleType

import pytest

from app.image import shipped_agents


def _load() -> ModuleType:
    import profiles

    path = next(iter(profiles.__path__)) + "/agents/airlock_netlog.py"
    spec = importlib.util.spec_from_file_location("airlock_netlog", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netlog = _load()
AGENT = ipaddress.ip_address("192.0.0.8").packed
AGENT6 = ipaddress.ip_address("100::8").packed


def ipv4(destination: str, protocol: int, payload: bytes) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        0x4000,
        64,
        protocol,
        0,
        AGENT,
        ipaddress.ip_address(destination).packed,
    )
    head = head[:10] + struct.pack("!H", netlog.checksum(head)) + head[12:]
    return head + payload


def ipv6(destination: str, protocol: int, payload: bytes, hop_by_hop: bool = False) -> bytes:
    if hop_by_hop:
        payload = struct.pack("!BB6x", protocol, 0) + payload
        protocol = 0
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(payload),
            protocol,
            64,
            AGENT6,
            ipaddress.ip_address(destination).packed,
        )
        + payload
    )


def syn(port: int, flags: int = 0x02) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, port, 1000, 0, 5 << 4, flags, 65535, 0, 0)


def udp(port: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", 40001, port, 8 + len(data), 0) + data


def dns_query(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return (
        struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)
    )


def test_the_witness_ships_in_the_image() -> None:
    assert "airlock_netlog.py" in {a.name for a in shipped_agents()}


@pytest.mark.parametrize(
    ("raw", "seen"),
    [
        (
            ipv4("203.0.113.5", 6, syn(443)),
            {"family": 4, "address": "203.0.113.5", "port": 443, "protocol": "tcp"},
        ),
        (
            ipv6("2001:db8::5", 6, syn(443)),
            {"family": 6, "address": "2001:db8::5", "port": 443, "protocol": "tcp"},
        ),
        (
            ipv6("2001:db8::5", 17, udp(9, b"x"), hop_by_hop=True),
            {"family": 6, "address": "2001:db8::5", "port": 9, "protocol": "udp"},
        ),
        (
            ipv4("10.0.0.53", 17, udp(53, dns_query("secret.example.com", 28))),
            {
                "family": 4,
                "address": "10.0.0.53",
                "port": 53,
                "protocol": "udp",
                "name": "secret.example.com",
                "qtype": 28,
            },
        ),
        (
            ipv4("10.0.0.53", 17, udp(53, dns_query("we\\ird.ex ample"))),
            {
                "family": 4,
                "address": "10.0.0.53",
                "port": 53,
                "protocol": "udp",
                "name": "we\\092ird.ex\\032ample",
                "qtype": 1,
            },
        ),
        (
            ipv4("10.0.0.53", 17, udp(53, b"\x00" * 12 + b"\xc0\x0c\x00\x01\x00\x01")),
            {"family": 4, "address": "10.0.0.53", "port": 53, "protocol": "udp"},
        ),
        (
            ipv4("198.51.100.1", 1, b"\x08\x00\x00\x00\x00\x01\x00\x01"),
            {"family": 4, "address": "198.51.100.1", "port": 8, "protocol": "icmp"},
        ),
        (
            ipv4("198.51.100.1", 47, b"gre"),
            {"family": 4, "address": "198.51.100.1", "port": 0, "protocol": "47"},
        ),
    ],
)
def test_attempts_are_described(raw: bytes, seen: dict[str, object]) -> None:
    assert netlog.describe(netlog.Packet(raw)) == seen


@pytest.mark.parametrize(
    "raw",
    [
        ipv4("203.0.113.5", 6, syn(443, flags=0x10)),  # an ACK: part of no attempt of its own
        ipv4("203.0.113.5", 6, syn(443, flags=0x12)),  # SYN-ACK
        ipv6("ff02::16", 58, b"\x8f\x00\x00\x00", hop_by_hop=True),  # the kernel's MLD report
        ipv6("ff02::2", 58, b"\x85\x00\x00\x00"),  # router solicitation
    ],
)
def test_what_is_not_an_attempt_is_not_reported(raw: bytes) -> None:
    assert netlog.describe(netlog.Packet(raw)) is None


@pytest.mark.parametrize("raw", [b"", b"\x45", b"\x60" + bytes(10), b"\x00" * 40])
def test_garbage_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        netlog.Packet(raw)


def _valid_transport(packet: bytes, family: int, protocol: int) -> bool:
    if family == 4:
        header, body = packet[:20], packet[20:]
        assert netlog.checksum(header) == 0
        pseudo = header[12:20] + struct.pack("!BBH", 0, protocol, len(body))
    else:
        body = packet[40:]
        pseudo = packet[8:40] + struct.pack("!I3xB", len(body), protocol)
    return bool(netlog.checksum(pseudo + body) == 0)


@pytest.mark.parametrize("family", [4, 6])
def test_a_syn_gets_a_reset_from_the_destination(family: int) -> None:
    raw = ipv4("203.0.113.5", 6, syn(443)) if family == 4 else ipv6("2001:db8::5", 6, syn(443))
    answer = netlog.tcp_reset(netlog.Packet(raw))
    assert answer is not None and _valid_transport(answer, family, 6)
    reply = netlog.Packet(answer)
    assert reply.source == netlog.Packet(raw).destination
    sport, dport, _, ack, _, flags = struct.unpack_from("!HHIIBB", reply.payload)
    assert (sport, dport, ack, flags) == (443, 40000, 1001, 0x14)
    assert netlog.tcp_reset(netlog.Packet(ipv4("203.0.113.5", 6, syn(443, 0x04)))) is None


@pytest.mark.parametrize("family", [4, 6])
def test_a_datagram_gets_port_unreachable_quoting_it(family: int) -> None:
    raw = (
        ipv4("203.0.113.5", 17, udp(9, b"hello"))
        if family == 4
        else ipv6("2001:db8::5", 17, udp(9, b"hello"))
    )
    answer = netlog.port_unreachable(netlog.Packet(raw))
    reply = netlog.Packet(answer)
    if family == 4:
        assert netlog.checksum(answer[:20]) == 0 and netlog.checksum(reply.payload) == 0
        assert reply.payload[:2] == b"\x03\x03"
    else:
        assert _valid_transport(answer, 6, 58) and reply.payload[:2] == b"\x01\x04"
    assert reply.payload.endswith(raw)


def test_a_flood_becomes_a_bounded_number_of_lines() -> None:
    reports = netlog.Reports()
    lines: list[dict[str, object]] = []
    start = reports.window
    for i in range(20000):
        seen = {"family": 4, "address": f"203.0.113.{i % 200}", "port": i % 1000, "protocol": "udp"}
        lines += reports.add(seen, start + 0.1)
    lines += reports.tick(start + 1.5)
    assert len(lines) <= netlog.LINES_PER_WINDOW + netlog.SUMMARIES_PER_WINDOW + 1
    assert sum(int(str(line["count"])) for line in lines) == 20000
    assert all(json.dumps(line) for line in lines)
    assert lines[-1]["event"] == "overflow"
