"""What a running session can see right now (app/sessions/sight.py): which remembered network
answers and waiting uploads are its own, and where its grants are inside, read from a real
store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.consent import ConsentRequest, RequestKind
from app.grants import Access, GrantRequest, Lifetime, Mode, NetworkGrant, grant_for
from app.paths import Dirs
from app.profiles import parse_profile
from app.sessions import LaunchRequest
from app.sessions.sight import HeldUpload, Reach, SeenPath, read_sight, session_sight
from app.store import StateStore
from tests.support import profile_text

NOW = 1_000_000.0
PROFILE = parse_profile(
    profile_text(
        "agent:test", extra='[network]\nallow = ["pypi.org:443"]\nask = ["api.example:443"]\n'
    ),
    "test.toml",
)


def network(
    gid: str,
    host: str,
    session: str | None,
    profile: str | None,
    access: Access = Access.CONNECT,
    allowed: bool = True,
) -> NetworkGrant:
    return NetworkGrant(gid, host, 443, access, allowed, Lifetime.SESSION, session, profile, NOW)


@pytest.mark.parametrize(
    ("grants", "how"),
    [
        ([], []),
        ([network("n1", "a.example", "s1", None)], ["you allowed to connect (this session)"]),
        ([network("n1", "a.example", "s2", None)], []),  # another session's
        (
            [network("n1", "b.example", None, "test-agent", access=Access.UPLOAD, allowed=False)],
            ["you refused to upload past the threshold (profile test-agent)"],
        ),
        ([network("n1", "b.example", None, "other")], []),  # another profile's
    ],
)
def test_only_its_own_and_its_profiles_answers_count(
    grants: list[NetworkGrant], how: list[str]
) -> None:
    sight = session_sight("s1", PROFILE, 60.0, [], {}, grants, [])
    assert sight.hosts[:2] == (
        Reach("pypi.org", (443,), "allowed by its profile"),
        Reach("api.example", (443,), "asks you first"),
    )
    assert [r.how for r in sight.hosts[2:]] == how


def test_only_its_own_uploads_are_held_and_its_limits_are_said() -> None:
    pending = [
        ConsentRequest("q1", "s1", "test-agent", RequestKind.UPLOAD, "a.example:443", {"size": 9}),
        ConsentRequest("q2", "s2", "test-agent", RequestKind.UPLOAD, "a.example:443"),
        ConsentRequest("q3", "s1", "test-agent", RequestKind.FILE_OPEN, "a file"),
    ]
    sight = session_sight("s1", PROFILE, None, [], {}, [], pending)
    assert sight.uploads == (HeldUpload("a.example:443", 9, pending[0].created_at),)
    limits = dict(sight.limits)
    assert (limits["memory"], limits["processes"], limits["time"]) == (
        "256.0 MiB",
        "64",
        "no limit",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    store = StateStore(dirs.database)
    yield store
    store.close()


def test_its_grants_in_force_and_where_they_are_inside_are_read_from_the_store(
    store: StateStore, tmp_path: Path
) -> None:
    notes, letter, old = tmp_path / "notes", tmp_path / "letter.txt", tmp_path / "old"
    at_launch = grant_for(
        GrantRequest(notes, Mode.READ), lifetime=Lifetime.SESSION, session="s1", now=NOW
    )
    picked = grant_for(
        GrantRequest(letter, Mode.READ_WRITE), lifetime=Lifetime.SESSION, session="s1", now=NOW
    )
    expired = grant_for(
        GrantRequest(old, Mode.READ),
        lifetime=Lifetime.SESSION,
        session="s1",
        now=NOW - 60,
        expires_at=NOW - 1,
    )
    store.add_grants([at_launch, expired], session="s1")
    store.add_grants([picked], session="s1", location="/run/airlock/documents/letter.txt")
    store.add_network_grant(network("n1", "a.example", "s1", None))
    launch = LaunchRequest(PROFILE, Path("test.toml"), timeout=30.0)

    sight = read_sight(store, "s1", launch, [], NOW)
    assert set(sight.paths) == {
        SeenPath(notes, Mode.READ, str(notes), Lifetime.SESSION, None),
        SeenPath(
            letter, Mode.READ_WRITE, "/run/airlock/documents/letter.txt", Lifetime.SESSION, None
        ),
    }
    assert [r.host for r in sight.hosts] == ["pypi.org", "api.example", "a.example"]
    assert dict(sight.limits)["time"] == "30 s"
