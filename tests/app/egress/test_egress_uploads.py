"""The one upload gate, by table: plain HTTP bodies and tunnels ask by the same rule."""

from __future__ import annotations

import pytest

from app.egress.uploads import UploadGate
from app.profiles import parse_profile


def gate(uploads: str, *, route: bool = False) -> UploadGate:
    approval = parse_profile(f'name = "t"\nimage = "i"\n[approval]\nuploads = "{uploads}"\n'
                             'upload_threshold = "1k"\n', "t.toml").approval
    return UploadGate.of(approval, route=route)


@pytest.mark.parametrize(("uploads", "route", "size", "findings", "asks"), [
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
])
def test_when_an_upload_waits_for_the_user(uploads: str, route: bool, size: int,
                                          findings: bool, asks: bool) -> None:
    assert gate(uploads, route=route).must_ask(size, findings=findings) is asks


@pytest.mark.parametrize("uploads", ["ask", "always"])
def test_after_an_approval_only_a_finding_asks_again(uploads: str) -> None:
    passed = gate(uploads)
    assert passed.must_ask(2048)
    passed.approve()
    assert not passed.must_ask(10**9)
    assert passed.must_ask(10**9, findings=True)
