"""The one upload gate, by table: plain HTTP bodies and tunnels ask by the same rule."""

from __future__ import annotations

import pytest

from app.egress.uploads import UploadGate, UploadLedger
from app.profiles import parse_profile


def gate(uploads: str, *, route: bool = False) -> UploadGate:
    approval = parse_profile(
        f'name = "t"\nimage = "i"\n[approval]\nuploads = "{uploads}"\nupload_threshold = "1k"\n',
        "t.toml",
    ).approval
    return UploadGate.of(approval, route=route)


@pytest.mark.parametrize(
    ("uploads", "route", "size", "findings", "asks"),
    [
        ("ask", False, 1, False, False),
        ("ask", False, 1024, False, False),  # at the threshold: through
        ("ask", False, 1025, False, True),  # one byte past it: asked
        ("ask", False, 10**9, False, True),
        ("ask", False, 1, True, True),  # a finding always asks
        ("always", False, 1, False, True),
        ("always", False, 0, False, True),
        ("never", False, 10**9, False, False),
        ("never", False, 1, True, True),
        ("ask", True, 10**9, False, False),  # a route is the agent's own service
        ("always", True, 1, False, False),
        ("ask", True, 1, True, True),  # but not for a private key or a granted file
    ],
)
def test_when_an_upload_waits_for_the_user(
    uploads: str, route: bool, size: int, findings: bool, asks: bool
) -> None:
    assert gate(uploads, route=route).must_ask(size, findings=findings) is asks


@pytest.mark.parametrize("uploads", ["ask", "always"])
def test_after_an_approval_only_a_finding_asks_again(uploads: str) -> None:
    passed = gate(uploads)
    assert passed.must_ask(2048)
    passed.approve()
    assert not passed.must_ask(10**9)
    assert passed.must_ask(10**9, findings=True)


def test_a_head_alone_asks_by_the_threshold_even_when_uploads_always_ask() -> None:
    always = gate("always")
    assert not always.must_ask(10, body=False)
    assert always.must_ask(1025, body=False) and always.must_ask(1, findings=True, body=False)
    assert not gate("never").must_ask(10**9, body=False)


def test_the_ledger_adds_up_a_destination_until_an_approval() -> None:
    ledger = UploadLedger()
    for _ in range(10):
        ledger.add("files.test:80", 100)
    passed = gate("ask")
    passed.before = ledger.before("files.test:80")
    assert not passed.must_ask(24) and passed.must_ask(25)
    ledger.approved("files.test:80")
    assert ledger.before("files.test:80") == 0 and ledger.before("other:80") == 0
    assert ledger.new_value("d", b"cookie", b"a=1")
    ledger.remember_value("d", b"cookie", b"a=1")
    assert not ledger.new_value("d", b"cookie", b"a=1") and ledger.new_value("d", b"cookie", b"a=2")
    assert ledger.new_name("*.x:443", "a.x")
    ledger.remember_name("*.x:443", "a.x")
    assert not ledger.new_name("*.x:443", "a.x")
