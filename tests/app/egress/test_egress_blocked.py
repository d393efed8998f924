"""Reports of the sidecar's witness: validated as untrusted input, limited per session, and
turned into `net.blocked` events by `BlockedLog` on a real unix socket."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from app.egress.blocked import (
    MAX_LINE,
    BlockedAttempt,
    BlockedLimiter,
    Ready,
    Uncounted,
    parse_report,
)
from app.egress.witness import BlockedLog
from app.events import Event, EventBus


def line(**fields: Any) -> bytes:
    return (
        json.dumps(
            dict(
                {
                    "event": "attempt",
                    "protocol": "tcp",
                    "family": 4,
                    "address": "203.0.113.5",
                    "port": 443,
                    "count": 1,
                },
                **fields,
            )
        ).encode()
        + b"\n"
    )


def test_a_good_attempt_becomes_plain_data() -> None:
    attempt = parse_report(line())
    assert attempt == BlockedAttempt("tcp", 4, "203.0.113.5", 443)
    assert attempt.subject == "203.0.113.5:443"
    six = parse_report(
        line(family=6, address="2001:DB8::5", protocol="udp", port=53, name="example.com", qtype=28)
    )
    assert isinstance(six, BlockedAttempt)
    assert six.subject == "[2001:db8::5]:53"
    assert six.details()["name"] == "example.com" and six.details()["qtype"] == 28
    assert "DNS query for example.com" in six.reason()
    assert parse_report(b'{"event":"ready","device":"airlock0"}') == Ready()
    assert parse_report(b'{"event":"overflow","count":7,"destinations":3}') == Uncounted(7, 3)
    assert parse_report(b'{"event":"lost","count":2}') == Uncounted(2, 0)
    assert parse_report(line(protocol="47")).protocol == "47"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b'{"event": "shell"}',
        b"\xff\xfe",
        line(protocol="tcp; rm -rf /"),
        line(protocol="1234"),
        line(family=5),
        line(family=6),
        line(address="example.com"),
        line(address="1" * 100),
        line(port=70000),
        line(port=-1),
        line(port="443"),
        line(port=True),
        line(count=0),
        line(count=2**41),
        line(name="a\nb"),
        line(name="x" * 254),
        line(name=7),
        line(qtype=-1),
        b'{"event":"overflow"}',
        b"{" + b" " * MAX_LINE + b"}",
    ],
)
def test_anything_malformed_is_refused_whole(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_report(bad)


def test_a_secret_in_a_dns_name_is_masked() -> None:
    token = "ghp_" + "a" * 36
    attempt = parse_report(line(protocol="udp", port=53, name=f"{token}.exfil.example"))
    assert isinstance(attempt, BlockedAttempt)
    assert token not in attempt.name and attempt.name.endswith(".exfil.example")


def test_the_limiter_lets_a_burst_through_then_counts() -> None:
    limiter = BlockedLimiter(rate=10, burst=5, window=1.0)
    attempt = BlockedAttempt("udp", 4, "203.0.113.5", 9)
    admitted = [limiter.admit(attempt, 0.0) for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    assert limiter.due(0.5) is None
    held = limiter.due(1.0)
    assert held is not None and (held.count, held.destinations) == (3, 1)
    assert limiter.due(2.0) is None
    assert limiter.admit(attempt, 1.1)  # a token came back after 0.1 s at 10/s
    limiter.hold(40, 1.2, destinations=9)
    flushed = limiter.flush()
    assert flushed is not None and (flushed.count, flushed.destinations) == (40, 9)


class Witness:
    """A stand-in for the sidecar's witness: a client of the log's socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)


async def _until(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_the_log_turns_reports_into_limited_events(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Event], BlockedLog]:
        bus = EventBus()
        events: list[Event] = []
        bus.attach(events.append)
        log = BlockedLog("s1", bus, BlockedLimiter(rate=1, burst=3, window=0.2))
        await log.start(tmp_path / "netlog.sock")
        witness = Witness(tmp_path / "netlog.sock")
        await witness.send(b'{"event":"ready"}\n')
        await asyncio.wait_for(log.ready.wait(), 5)
        # A second connection is not the witness: it is closed and reads nothing.
        intruder = Witness(tmp_path / "netlog.sock")
        await intruder.send(line(address="198.51.100.1"))
        await witness.send(b"garbage\n" + b"x" * (MAX_LINE * 3) + b"\n")
        await witness.send(b"".join(line(port=p) for p in range(1, 11)))
        await witness.send(line(address="2001:db8::1", family=6, count=5))
        await witness.send(b'{"event":"overflow","count":100,"destinations":4}\n')
        await _until(lambda: any(e.subject == "*" for e in events))
        await log.close()
        return events, log

    events, log = asyncio.run(scenario())
    assert all(e.kind == "net.blocked" and e.session == "s1" for e in events)
    single = [e for e in events if e.subject != "*"]
    assert [e.subject for e in single] == ["203.0.113.5:1", "203.0.113.5:2", "203.0.113.5:3"]
    coalesced = [e.details for e in events if e.subject == "*"]
    assert sum(d["count"] for d in coalesced) == 7 + 5 + 100
    assert all(d["coalesced"] and d["protocol"] == "*" for d in coalesced)
    assert "198.51.100.1:443" not in {e.subject for e in events}
    assert log.malformed >= 2
