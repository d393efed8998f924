"""Who decided an exchange, by table: an answer's `by` as the Network tab names it."""

from __future__ import annotations

import pytest

from app.egress.records import ExchangeRecord, who_answered


@pytest.mark.parametrize(
    ("by", "who"),
    [
        ("dialog", "user"),
        ("notification", "user"),
        ("tty", "user"),
        ("deny-all", "user"),
        ("dialog closed", "user"),
        ("rule", "policy"),
        ("grant n-1a2b3c4d", "grant"),
        ("timeout", "timeout"),
        ("no front end", "no answer"),
        ("vanished", "no answer"),
        ("withdrawn", "no answer"),
    ],
)
def test_who_answered(by: str, who: str) -> None:
    assert who_answered(by) == who


def test_a_record_says_who_decided_and_whether_it_asked() -> None:
    record = ExchangeRecord(method="GET", host="a.test", port=80, decided_by="user", asked=True)
    details = record.details()
    assert details["decided_by"] == "user" and details["asked"] is True
    assert "decided_by" not in ExchangeRecord().details()  # the proxy's own refusals
