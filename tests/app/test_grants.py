"""Grants (app/grants.py): what a path on the command line becomes, what a grant covers and
for how long, and what each lifetime needs. Paths are checked against a real temporary tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.errors import GrantError
from app.grants import (
    Grant,
    GrantRequest,
    Lifetime,
    Mode,
    grant_for,
    parse_grant_argument,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("a\n")
    (tmp_path / "link").symlink_to(tmp_path / "notes")
    os.mkfifo(tmp_path / "pipe")
    return tmp_path


@pytest.mark.parametrize(
    ("argument", "path", "mode"),
    [
        ("notes", "notes", Mode.READ),
        ("notes:ro", "notes", Mode.READ),
        ("notes:rw", "notes", Mode.READ_WRITE),
        ("notes/a.md:rw", "notes/a.md", Mode.READ_WRITE),
        ("./notes/../notes/a.md", "notes/a.md", Mode.READ),
        ("link", "notes", Mode.READ),  # granted where it really is
        ("link/a.md:rw", "notes/a.md", Mode.READ_WRITE),
    ],
)
def test_a_grant_argument_becomes_a_resolved_request(
    argument: str, path: str, mode: Mode, tree: Path
) -> None:
    assert parse_grant_argument(argument, tree) == GrantRequest(tree / path, mode)


@pytest.mark.parametrize(
    ("argument", "refusal"),
    [
        (":rw", "empty path"),
        ("missing", "no such file or directory"),
        ("pipe", "only regular files and directories"),
        ("notes/a\x1b.md", "control characters"),
        ("/", "the whole file system"),
    ],
)
def test_a_grant_argument_that_cannot_be_granted_is_refused_by_name(
    argument: str, refusal: str, tree: Path
) -> None:
    with pytest.raises(GrantError, match=refusal):
        parse_grant_argument(argument, tree)


def grant(path: str, expires_at: float | None = None, revoked_at: float | None = None) -> Grant:
    return Grant(
        "g-1", Path(path), Mode.READ, Lifetime.SESSION, "s", None, 0.0, expires_at, revoked_at
    )


@pytest.mark.parametrize(
    ("covered", "covers"),
    [
        ("/home/u/notes", True),
        ("/home/u/notes/a.md", True),
        ("/home/u/notes/sub/b.md", True),
        ("/home/u/notes-old", False),  # a sibling with a longer name
        ("/home/u", False),
        ("/home/u/other", False),
    ],
)
def test_what_a_grant_covers(covered: str, covers: bool) -> None:
    assert grant("/home/u/notes").covers(Path(covered)) is covers


@pytest.mark.parametrize(
    ("expires_at", "revoked_at", "now", "active"),
    [
        (None, None, 100.0, True),
        (200.0, None, 100.0, True),
        (200.0, None, 200.0, False),  # expired at that instant
        (None, 50.0, 100.0, False),
        (200.0, 50.0, 100.0, False),
    ],
)
def test_when_a_grant_is_active(
    expires_at: float | None, revoked_at: float | None, now: float, active: bool
) -> None:
    assert grant("/x", expires_at, revoked_at).active(now) is active


REQUEST = GrantRequest(Path("/home/u/notes"), Mode.READ)


@pytest.mark.parametrize(
    ("lifetime", "arguments", "refusal"),
    [
        (Lifetime.ONCE, {}, "needs a session"),
        (Lifetime.SESSION, {}, "needs a session"),
        (Lifetime.ALWAYS, {"session": "s"}, "needs a profile"),
        (Lifetime.UNTIL, {"session": "s"}, "needs an expiry time"),
    ],
)
def test_each_lifetime_needs_what_it_is_bound_to(
    lifetime: Lifetime, arguments: dict[str, str], refusal: str
) -> None:
    with pytest.raises(GrantError, match=refusal):
        grant_for(REQUEST, lifetime=lifetime, **arguments)  # type: ignore[arg-type]


def test_a_grant_keeps_what_it_was_made_from() -> None:
    made = grant_for(REQUEST, lifetime=Lifetime.UNTIL, session="s", expires_at=300.0, now=100.0)
    assert (made.path, made.mode, made.lifetime, made.session, made.profile) == (
        REQUEST.path,
        Mode.READ,
        Lifetime.UNTIL,
        "s",
        None,
    )
    assert (made.created_at, made.expires_at, made.revoked_at) == (100.0, 300.0, None)
    assert (
        made.id.startswith("g-")
        and made.id != grant_for(REQUEST, lifetime=Lifetime.ONCE, session="s").id
    )
