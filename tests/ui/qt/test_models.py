"""The desktop app's feed line for network events: method, redacted path, and whether
HTTPS was inspected or passed opaque."""

from __future__ import annotations

import pytest

from app.events import Event, EventKind
from ui.qt.models import summary


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        (
            EventKind.NET_REQUEST,
            {"method": "POST", "path": "/v1/messages?key=…", "inspection": "inspected"},
            "POST /v1/messages?key=… (inspected): allowed, ok · ↑1.0 KiB ↓2.0 KiB",
        ),
        (
            EventKind.NET_TUNNEL,
            {"method": "CONNECT", "path": "", "inspection": "opaque"},
            "CONNECT (opaque): allowed, ok · ↑1.0 KiB ↓2.0 KiB",
        ),
        (
            EventKind.NET_REQUEST,
            {"method": "GET", "path": "/plain"},
            "GET /plain: allowed, ok · ↑1.0 KiB ↓2.0 KiB",
        ),
    ],
)
def test_a_network_event_says_what_was_seen(
    kind: EventKind, extra: dict[str, str], expected: str
) -> None:
    details = {"decision": "allow", "bytes_up": 1024, "bytes_down": 2048, "reason": "ok", **extra}
    assert summary(Event(kind, "s", "api.test:443", details)) == expected
