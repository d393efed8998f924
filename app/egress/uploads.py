"""When an upload waits for the user: the one rule, for plain HTTP bodies and tunnels alike.

Pure: the proxy's core asks it before a held body is forwarded and before each chunk goes up
a tunnel, with the size that would then have left and whether inspection found something.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def of(cls, approval: Approval, *, route: bool = False) -> UploadGate:
        return cls(approval.uploads, approval.upload_threshold, route)

    def must_ask(self, size: int, *, findings: bool = False) -> bool:
        if findings:
            return True
        if self.route or self.approved:
            return False
        if self.uploads == "always":
            return True
        return self.uploads == "ask" and size > self.threshold

    def approve(self) -> None:
        self.approved = True
