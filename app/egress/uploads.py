"""When an upload waits for the user: the one rule, for plain HTTP bodies, request heads and
tunnels alike.

Pure: the proxy's core asks it before a held body is forwarded and before each chunk goes up
a tunnel, with the size that would then have left and whether inspection found something.
A plain-HTTP request's data (its body, and what its head carries: path, query, header values
that changed, new host labels under a wildcard) also adds up per destination over the
session in `UploadLedger`, so that many small requests are one upload as far as the
threshold goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.profiles import Approval


@dataclass(slots=True)
class UploadGate:
    """One exchange's gate. A finding always asks (also on a route, and again after an
    approval: it is news); otherwise a route never asks (sending the agent's data to its own
    service is the route's job), `never` never asks, `always` asks once, and `ask` asks once
    the size passes the profile's threshold. After an approval only findings ask again."""

    uploads: str
    threshold: int
    route: bool = False
    approved: bool = False
    before: int = 0  # what the destination got earlier in the session (`UploadLedger`)

    @classmethod
    def of(cls, approval: Approval, *, route: bool = False, before: int = 0) -> UploadGate:
        return cls(approval.uploads, approval.upload_threshold, route, before=before)

    def must_ask(self, size: int, *, findings: bool = False, body: bool = True) -> bool:
        """`body`: the data is a body (or a tunnel's stream); False for a head alone, which
        `always` does not ask about (every GET would) — only the threshold and findings do."""
        if findings:
            return True
        if self.route or self.approved:
            return False
        if self.uploads == "always" and body:
            return True
        return self.uploads != "never" and self.before + size > self.threshold

    def approve(self) -> None:
        self.approved = True


@dataclass(slots=True)
class UploadLedger:
    """What a session sent each destination since the user last approved an upload to it,
    and what its request heads said before (a header value repeated carries nothing new).
    One per session, shared by its connections; a destination is `host:port`, or the
    wildcard rule's pattern and port for hosts matched by one (each new name under it is
    data)."""

    sent: dict[str, int] = field(default_factory=dict)
    said: dict[tuple[str, bytes], int] = field(default_factory=dict)  # -> hash of the value
    labels: dict[str, set[str]] = field(default_factory=dict)  # wildcard -> names seen
    pieces: dict[str, set[int]] = field(default_factory=dict)  # granted file -> pieces seen
    cookies: dict[str, set[int]] = field(default_factory=dict)  # destination -> what it set

    MAX_REMEMBERED = 4096  # names and header values per destination, then counted anew

    def before(self, destination: str) -> int:
        return self.sent.get(destination, 0)

    def add(self, destination: str, amount: int) -> None:
        self.sent[destination] = self.sent.get(destination, 0) + amount

    def approved(self, destination: str) -> None:
        """The user approved what went so far: counting starts again."""
        self.sent.pop(destination, None)

    def new_value(self, destination: str, name: bytes, value: bytes) -> bool:
        """Whether a header's value differs from the last one sent there."""
        return self.said.get((destination, name)) != hash(value)

    def remember_value(self, destination: str, name: bytes, value: bytes) -> None:
        if len(self.said) < self.MAX_REMEMBERED * 16 or (destination, name) in self.said:
            self.said[(destination, name)] = hash(value)

    def new_name(self, destination: str, name: str) -> bool:
        """Whether a host name under a wildcard is new to the session."""
        return name not in self.labels.get(destination, ())

    def remember_name(self, destination: str, name: str) -> None:
        names = self.labels.setdefault(destination, set())
        if len(names) < self.MAX_REMEMBERED:
            names.add(name)

    def set_cookie(self, destination: str, value: bytes) -> None:
        """The destination set a cookie (a `Set-Cookie` value): sent back, it is not data."""
        pair = value.split(b";", 1)[0].strip()
        cookies = self.cookies.setdefault(destination, set())
        if pair and len(cookies) < self.MAX_REMEMBERED:
            cookies.add(hash(pair))

    def agents_cookies(self, destination: str, value: bytes) -> bytes:
        """A `Cookie` header without the cookies the destination set itself, as they were."""
        known = self.cookies.get(destination)
        if not known:
            return value
        pairs = [p.strip() for p in value.split(b";")]
        return b"; ".join(p for p in pairs if p and hash(p) not in known)
