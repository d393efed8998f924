"""Grants and sessions in the state database: lifetimes, revocation, cross-process use."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from app.errors import GrantError
from app.grants import GrantRequest, Lifetime, Mode, grant_for, parse_grant_argument
from app.store import SessionRecord, SessionState, StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def session(store: StateStore, name: str) -> None:
    store.add_session(
        SessionRecord(name, "p", "img", None, "1:1", SessionState.RUNNING, time.time())
    )


def test_session_grants_end_with_the_session(store: StateStore, tmp_path: Path) -> None:
    session(store, "s1")
    grant = grant_for(GrantRequest(tmp_path, Mode.READ), lifetime=Lifetime.SESSION, session="s1")
    store.add_grants([grant], session="s1")
    assert [g.id for g in store.session_grants("s1", time.time())] == [grant.id]
    store.end_session("s1", SessionState.EXITED, 0, "exited normally")
    assert store.session_grants("s1", time.time()) == []
    assert store.session("s1").exit_code == 0  # type: ignore[union-attr]


def test_profile_grants_last_until_revoked_or_expired(store: StateStore, tmp_path: Path) -> None:
    always = grant_for(GrantRequest(tmp_path, Mode.READ), lifetime=Lifetime.ALWAYS, profile="p")
    until = grant_for(
        GrantRequest(tmp_path, Mode.READ),
        lifetime=Lifetime.UNTIL,
        profile="p",
        expires_at=time.time() + 60,
    )
    store.add_grants([always, until])
    now = time.time()
    assert {g.id for g in store.profile_grants("p", now)} == {always.id, until.id}
    assert {g.id for g in store.profile_grants("p", now + 120)} == {always.id}
    store.revoke([always.id])
    assert store.profile_grants("p", now + 120) == []
    assert store.grant(always.id).revoked_at is not None  # type: ignore[union-attr]


def test_two_connections_see_each_other(tmp_path: Path) -> None:
    first, second = StateStore(tmp_path / "s.db"), StateStore(tmp_path / "s.db")
    session(first, "s1")
    assert second.session("s1") is not None
    second.end_session("s1", SessionState.SWEPT, None, "supervisor vanished")
    assert first.sessions(live_only=True) == []


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("", "empty path"),
        ("/definitely/not/here", "no such file or directory"),
        ("/", "granting the whole file system"),
        ("/dev/null", "only regular files and directories"),
        ("/tmp/\x1b[31m", "control characters"),
    ],
)
def test_bad_grant_arguments(argument: str, message: str) -> None:
    with pytest.raises(GrantError, match=message.replace("[", r"\[")):
        parse_grant_argument(argument, Path("/"))


def test_read_write_suffix(tmp_path: Path) -> None:
    assert parse_grant_argument(f"{tmp_path}:rw", Path("/")).mode is Mode.READ_WRITE
    assert parse_grant_argument(f"{tmp_path}:ro", Path("/")).mode is Mode.READ


def test_grant_argument_resolves_relative_paths_and_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    request = parse_grant_argument("alias:ro", tmp_path)
    assert request == GrantRequest(tmp_path / "real", Mode.READ)


def test_a_write_waits_out_another_process_holding_the_file_past_sqlites_own_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another airlock process, slow to commit (a busy disk)
    # SQLite's own timeout shortened from 10 s: the holder lets go only after it ran out.
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))  # past the 0.5 s timeout
    release.start()
    store = StateStore(path, busy_timeout=0.5)
    try:
        store.add_session(
            SessionRecord(
                id="s1",
                profile="p",
                image="i",
                container_id=None,
                supervisor="1:1",
                state=SessionState.STARTING,
                started_at=0.0,
            )
        )
        assert [r.id for r in store.sessions()] == ["s1"]
    finally:
        release.join()
        holder.close()
        store.close()
