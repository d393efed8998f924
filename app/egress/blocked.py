"""Attempts to leave outside the proxy, as the sidecar's witness reports them: each report
line validated into plain data, and a limiter that keeps a flooding agent from flooding the
event stream. Pure: no I/O, the clock is passed in.

The witness (`profiles/agents/airlock_netlog.py`) sees the agent's packets; its lines are
untrusted input twice over — the packets are the agent's, and the witness runs on the
profile's image. So every field is checked here, lengths are bounded, and a line that does
not fit is dropped (and counted), never half-used.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from app.egress.inspect import mask_secrets

MAX_LINE = 2048
MAX_COUNT = 1 << 40
PROTOCOLS = frozenset({"tcp", "udp", "icmp"})
# The witness escapes anything else in a DNS label as \DDD.
_NAME = re.compile(r"^[\x21-\x7e]{1,253}$")
_OTHER_PROTOCOL = re.compile(r"^[0-9]{1,3}$")


@dataclass(frozen=True, slots=True)
class BlockedAttempt:
    """One destination the agent tried to reach directly, `count` times."""

    protocol: str  # tcp, udp, icmp, or an IP protocol number
    family: int  # 4 or 6
    address: str
    port: int  # for icmp: the message type
    count: int = 1
    name: str = ""  # the DNS question, when the datagram carried one
    qtype: int = 0

    @property
    def subject(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{host}:{self.port}"

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "family": self.family,
            "address": self.address,
            "port": self.port,
            "count": self.count,
            "decision": "deny",
            "rule": "no-route",
            "reason": self.reason(),
        }
        if self.name:
            out["name"] = self.name
            out["qtype"] = self.qtype
        return out

    def reason(self) -> str:
        if self.name:
            return f"DNS query for {self.name}: there is no DNS inside, the proxy resolves"
        what = {"tcp": "TCP connection", "udp": "UDP datagram", "icmp": "ICMP message"}.get(
            self.protocol, f"IP protocol {self.protocol} packet"
        )
        return f"direct {what}: the only way out is the proxy"


@dataclass(frozen=True, slots=True)
class Ready:
    """The witness has its device and routes, and dropped its privileges."""


@dataclass(frozen=True, slots=True)
class Uncounted:
    """Attempts the witness counted without their destinations (it was flooded, or its
    reports to the supervisor stalled)."""

    count: int
    destinations: int = 0


Report = BlockedAttempt | Ready | Uncounted


def parse_report(line: bytes) -> Report:
    """One line from the witness. Raises ValueError for anything malformed."""
    if len(line) > MAX_LINE:
        raise ValueError("report line too long")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    event = data.get("event")
    if event == "ready":
        return Ready()
    if event in ("overflow", "lost"):
        return Uncounted(
            _integer(data, "count", 1, MAX_COUNT),
            _integer(data, "destinations", 0, MAX_COUNT, default=0),
        )
    if event != "attempt":
        raise ValueError(f"unknown report {str(event)[:40]!r}")
    protocol = data.get("protocol")
    if not isinstance(protocol, str) or not (
        protocol in PROTOCOLS or _OTHER_PROTOCOL.match(protocol)
    ):
        raise ValueError("bad protocol")
    family = _integer(data, "family", 4, 6)
    raw_address = data.get("address")
    if not isinstance(raw_address, str) or len(raw_address) > 45:
        raise ValueError("bad address")
    try:
        address = ipaddress.ip_address(raw_address)
    except ValueError as e:
        raise ValueError("bad address") from e
    if address.version != family:
        raise ValueError("address and family disagree")
    name = data.get("name", "")
    if not isinstance(name, str) or (name and not _NAME.match(name)):
        raise ValueError("bad DNS name")
    return BlockedAttempt(
        protocol=protocol,
        family=family,
        address=str(address),
        port=_integer(data, "port", 0, 65535),
        count=_integer(data, "count", 1, MAX_COUNT),
        # A name is the agent's choice of text, like a URL path: it may carry a token.
        name=mask_secrets(name),
        qtype=_integer(data, "qtype", 0, 65535, default=0),
    )


def _integer(
    data: dict[str, Any], key: str, low: int, high: int, default: int | None = None
) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"bad {key}")
    return value


@dataclass(slots=True)
class Coalesced:
    """What the limiter held back over one window: to be emitted as one event."""

    count: int
    destinations: int


class BlockedLimiter:
    """At most `burst` attempt events at once and `rate` a second after that, per session;
    the rest are added up and come out as one coalesced event per `window`. The witness
    limits its lines already; this holds even if it does not."""

    def __init__(
        self,
        rate: float = 20.0,
        burst: float = 100.0,
        window: float = 1.0,
        max_destinations: int = 4096,
    ) -> None:
        self.rate, self.burst, self.window = rate, burst, window
        self.max_destinations = max_destinations
        self._tokens = burst
        self._stamp: float | None = None
        self._held = 0
        self._destinations: set[str] = set()
        self._uncounted_destinations = 0
        self._since: float | None = None

    def admit(self, attempt: BlockedAttempt, now: float) -> bool:
        """True: emit this attempt's event. False: it is held and counted."""
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.hold(attempt.count, now, attempt.subject)
        return False

    def hold(self, count: int, now: float, destination: str = "", destinations: int = 0) -> None:
        self._held += count
        self._uncounted_destinations += destinations
        if destination and len(self._destinations) < self.max_destinations:
            self._destinations.add(destination)
        if self._since is None:
            self._since = now

    def due(self, now: float) -> Coalesced | None:
        """The held attempts once their window has passed (or None)."""
        if self._since is None or now - self._since < self.window:
            return None
        out = Coalesced(self._held, len(self._destinations) + self._uncounted_destinations)
        self._held, self._uncounted_destinations, self._since = 0, 0, None
        self._destinations.clear()
        return out

    def flush(self) -> Coalesced | None:
        """Whatever is held, now (the session is ending)."""
        if self._since is None:
            return None
        return self.due(self._since + self.window)
