"""What the log keeps of one exchange of the egress proxy: one record, filled in as the
exchange goes, emitted once as its `net.request`, `net.tunnel` or `net.refused` event, and
once more as `net.credential` when a route added its key to it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.egress.inspect import mask_secrets
from app.egress.requests import redact_path


@dataclass(slots=True)
class ExchangeRecord:
    """What the log keeps of one exchange. Mutable: the core and, for bytes a tunnel or a
    splice moves, the driver count into it while the exchange runs."""

    method: str = ""
    host: str = ""
    port: int = 0
    path: str = ""
    status: int = 0
    up: int = 0
    down: int = 0
    decision: str = "deny"
    rule: str = ""
    reason: str = ""
    address: str = ""
    route: str = ""
    route_header: str = ""  # the header a route's credential went out in (its name only)
    held: bool = False
    grants: list[str] = field(default_factory=list)  # network grants that let it through
    findings: list[dict[str, object]] = field(default_factory=list)
    sha256: str = ""
    websocket: bool = False  # an upgraded connection: frames counted each way
    inspection: str = ""  # HTTPS: "inspected" (decrypted, seen) or "opaque" (a tunnel)
    frames_up: int = 0
    frames_down: int = 0
    # Who decided (`who_answered`): "policy", "grant", "user", "timeout", "no answer";
    # empty for the proxy's own refusals (a malformed request, a limit).
    decided_by: str = ""
    asked: bool = False  # a question was put to the user about the host
    started: float = field(default_factory=time.monotonic)

    @property
    def subject(self) -> str:
        return f"{self.host}:{self.port}" if self.host else "-"

    def refused(self, status: int, rule: str, reason: str) -> None:
        self.status, self.rule, self.reason = status, rule, reason
        self.decision = "deny"

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "path": mask_secrets(redact_path(self.path)),
            "status": self.status,
            "bytes_up": self.up,
            "bytes_down": self.down,
            "duration": round(time.monotonic() - self.started, 6),
            "decision": self.decision,
            "rule": self.rule,
            "reason": self.reason,
        }
        for key in ("address", "route", "route_header", "sha256", "inspection", "decided_by"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.grants:
            out["grants"] = list(self.grants)
        if self.websocket:
            out["websocket"] = {"frames_up": self.frames_up, "frames_down": self.frames_down}
        if self.asked:
            out["asked"] = True
        if self.held:
            out["held"] = True
            out["findings"] = self.findings
        return out


def who_answered(by: str) -> str:
    """Who an answer's `by` (app/consent.py `Answer.by`) names, as the Network tab shows it:
    a remembered grant, the profile's rule, the clock, nobody (the front end went away), or
    else the person at a front end (dialog, notification, terminal, "deny all")."""
    if by.startswith("grant"):
        return "grant"
    if by == "rule":
        return "policy"
    if by == "timeout":
        return "timeout"
    if by in ("no front end", "vanished", "cancelled", "withdrawn"):
        return "no answer"
    return "user"
