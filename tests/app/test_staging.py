"""Staged writes (app/staging.py) on real trees: what each kind of staged entry lists as,
against the host as it is now and as it was when granted; staged file copies, withdrawal,
discarding, rebasing after a commit; the changeset's id."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import app.staging
from app.fs import sha256_file
from app.staging import (
    Change,
    ChangeKind,
    Changeset,
    EntryType,
    RootKind,
    SessionStaging,
    changeset_digest,
    landing_mode,
)

QUOTA = 1024**2


@pytest.fixture
def host(tmp_path: Path) -> Path:
    host = tmp_path / "project"
    (host / "sub").mkdir(parents=True)
    (host / "notes.txt").write_text("the user's notes\n")
    (host / "sub" / "old.txt").write_text("old\n")
    (host / "script.sh").write_text("echo hi\n")
    os.chmod(host / "script.sh", 0o644)
    return host


@pytest.fixture
def staging(tmp_path: Path) -> SessionStaging:
    return SessionStaging(tmp_path / "staging", "s1")


def listed(staging: SessionStaging, host: Path) -> dict[str, Change]:
    return {str(c.path.relative_to(host)): c for c in staging.changeset().changes}


def whiteout(path: Path) -> None:
    """What an overlay leaves in its upper layer for a deleted entry (root makes it here)."""
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def test_each_kind_of_staged_entry_lists_as_its_change(host: Path, staging: SessionStaging) -> None:
    root, upper, work = staging.add_tree(host, "g1", QUOTA, None)
    assert root.kind is RootKind.TREE and upper.is_dir() and work.is_dir()
    (upper / "notes.txt").write_text("the agent's notes\n")
    (upper / "new.txt").write_text("new\n")
    (upper / "script.sh").write_text("echo hi\n")
    os.chmod(upper / "script.sh", 0o755)
    (upper / "link").symlink_to("notes.txt")
    (upper / "sub").mkdir()
    whiteout(upper / "sub" / "old.txt")
    changes = listed(staging, host)
    assert {path: c.kind for path, c in changes.items()} == {
        "notes.txt": ChangeKind.MODIFIED,
        "new.txt": ChangeKind.ADDED,
        "script.sh": ChangeKind.MODE,
        "link": ChangeKind.ADDED,
        "sub/old.txt": ChangeKind.DELETED,
    }
    notes = changes["notes.txt"]
    assert notes.old_hash == sha256_file(host / "notes.txt")
    assert notes.new_hash == sha256_file(upper / "notes.txt") and notes.problems == ()
    assert changes["script.sh"].mode_change == (0o644, 0o755)
    assert changes["link"].type is EntryType.SYMLINK and changes["link"].link_target == "notes.txt"
    assert changes["sub/old.txt"].old_hash == sha256_file(host / "sub" / "old.txt")


def test_a_deletion_and_an_addition_of_the_same_content_are_a_rename(
    host: Path, staging: SessionStaging
) -> None:
    _, upper, _ = staging.add_tree(host, "g1", QUOTA, None)
    (upper / "sub").mkdir()
    whiteout(upper / "sub" / "old.txt")
    (upper / "moved.txt").write_text("old\n")
    [change] = staging.changeset().changes
    assert change.kind is ChangeKind.RENAMED
    assert (change.path, change.renamed_from) == (host / "moved.txt", host / "sub" / "old.txt")


def test_what_a_commit_would_refuse_is_listed_with_the_reason(
    host: Path, staging: SessionStaging
) -> None:
    _, upper, _ = staging.add_tree(host, "g1", QUOTA, None)
    (upper / "setuid").write_text("x\n")
    os.chmod(upper / "setuid", 0o4755)
    (upper / "linked").write_text("x\n")
    os.link(upper / "linked", upper / "linked-too")
    (upper / "out").symlink_to("../../etc/passwd")
    os.mkfifo(upper / "fifo")
    (upper / "bad\x1bname").write_text("x\n")
    problems = {path: c.problems for path, c in listed(staging, host).items()}
    assert "set-user-ID or set-group-ID bit: not committed" in problems["setuid"]
    assert problems["linked"][0].startswith("a hard link (2 names)")
    assert problems["out"] == (f"a symlink to '../../etc/passwd', outside {host}",)
    assert problems["fifo"][0].startswith("a FIFO file")
    assert problems["bad\x1bname"] != ()


def test_a_host_file_changed_since_the_grant_is_a_conflict(
    host: Path, staging: SessionStaging
) -> None:
    _, upper, _ = staging.add_tree(host, "g1", QUOTA, None)
    (upper / "notes.txt").write_text("the agent's notes\n")
    (upper / "fresh.txt").write_text("the agent's\n")
    (host / "notes.txt").write_text("the user edited it meanwhile\n")
    (host / "fresh.txt").write_text("the user made it meanwhile\n")
    changes = listed(staging, host)
    assert (
        changes["notes.txt"]
        .problems[0]
        .startswith("conflict: changed on the host since it was granted (host sha256 ")
    )
    assert (
        changes["fresh.txt"].problems[0].startswith("conflict: created on the host since the grant")
    )


def test_rebase_makes_the_hosts_new_state_the_base(host: Path, staging: SessionStaging) -> None:
    root, upper, _ = staging.add_tree(host, "g1", QUOTA, None)
    (upper / "notes.txt").write_text("the agent's notes\n")
    (host / "notes.txt").write_text("as committed\n")
    assert listed(staging, host)["notes.txt"].problems
    staging.rebase(root, [host / "notes.txt"])
    assert listed(staging, host)["notes.txt"].problems == ()


def test_a_staged_file_copy_is_private_and_withdrawn_with_its_grant(
    host: Path, staging: SessionStaging, tmp_path: Path
) -> None:
    saves = tmp_path / "saves" / "token"
    root = staging.add_file(host / "notes.txt", "g2", QUOTA, saves, copy_from_host=True, owner=None)
    assert root.kind is RootKind.FILE and root.upper == saves / "notes.txt"
    assert root.upper.read_text() == "the user's notes\n"
    assert staging.changeset().changes == ()  # a copy of the host file changes nothing
    root.upper.write_text("edited\n")
    [change] = staging.changeset().changes
    assert change.kind is ChangeKind.MODIFIED and change.path == host / "notes.txt"
    [moved] = staging.withdraw("g2")
    assert not root.upper.exists() and moved.upper.read_text() == "edited\n"
    assert staging.changeset().changes[0].staged == moved.upper  # nothing staged is lost


def test_add_file_never_writes_through_what_the_agent_planted(
    host: Path, staging: SessionStaging, tmp_path: Path
) -> None:
    saves = tmp_path / "saves"
    saves.mkdir()
    (saves / "token").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        staging.add_file(host / "new.txt", "g3", QUOTA, saves / "token", False, None)
    assert not (tmp_path / "elsewhere").exists()


def test_discard_forgets_the_agents_version(host: Path, staging: SessionStaging) -> None:
    _, upper, _ = staging.add_tree(host, "g1", QUOTA, None)
    (upper / "notes.txt").write_text("the agent's notes\n")
    (upper / "new.txt").write_text("new\n")
    changes = staging.changeset().changes
    staging.discard([c for c in changes if c.path.name == "new.txt"])
    assert [c.path.name for c in staging.changeset().changes] == ["notes.txt"]
    assert (host / "notes.txt").read_text() == "the user's notes\n"


def test_past_the_limit_the_changeset_says_it_is_cut_short(
    host: Path, staging: SessionStaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(app.staging.MAX_CHANGES_VARIABLE, "3")
    _, upper, _ = staging.add_tree(host, "g1", QUOTA, None)
    for i in range(5):
        (upper / f"n{i}").write_text(f"{i}\n")
    changeset = staging.changeset()
    assert changeset.truncated and len(changeset.changes) <= 3 and changeset.limit == 3


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        (None, app.staging.MAX_CHANGES),
        ("1000", 1000),
        ("1", 1),
        (str(app.staging.MAX_CHANGES * 10), app.staging.MAX_CHANGES),  # never raised
        ("0", app.staging.MAX_CHANGES),
        ("-5", app.staging.MAX_CHANGES),
        ("many", app.staging.MAX_CHANGES),
        ("", app.staging.MAX_CHANGES),
    ],
)
def test_the_change_limit_can_only_be_lowered(value: str | None, limit: int) -> None:
    environ = {} if value is None else {app.staging.MAX_CHANGES_VARIABLE: value}
    assert app.staging.change_limit(environ) == limit


def test_seal_marks_the_staging_area_and_remove_all_removes_it(
    host: Path, staging: SessionStaging
) -> None:
    staging.add_tree(host, "g1", QUOTA, None)
    assert not staging.sealed
    staging.seal()
    assert staging.sealed
    staging.remove_all()
    assert not staging.root.exists() and (host / "notes.txt").exists()


def test_the_changeset_id_is_independent_of_order_and_changes_with_content(
    host: Path,
) -> None:
    a = Change(host / "a", ChangeKind.ADDED, EntryType.FILE, "r", new_hash="1")
    b = Change(host / "b", ChangeKind.ADDED, EntryType.FILE, "r", new_hash="2")
    b2 = Change(host / "b", ChangeKind.ADDED, EntryType.FILE, "r", new_hash="3")
    assert Changeset("s", (a, b)).digest == Changeset("s", (b, a)).digest
    assert Changeset("s", (a, b)).digest != Changeset("s", (a, b2)).digest
    assert len(changeset_digest([])) == 12
    assert Changeset("s", (a, b)).select([host / "b"]) == [b]
    assert Changeset("s", (a, b)).select(None) == [a, b]


@pytest.mark.parametrize(
    ("kind", "mode", "lands"),
    [
        (EntryType.FILE, 0o100755, 0o755),
        (EntryType.FILE, 0o101777, 0o777),  # a file's sticky bit means nothing
        (EntryType.FILE, 0o104755, 0o755),  # set-ID bits are refused, never carried
        (EntryType.DIRECTORY, 0o43775, 0o3775),  # a directory keeps sticky and set-group-ID
        (EntryType.SYMLINK, 0o120777, None),
        (EntryType.SPECIAL, 0o10644, None),
        (EntryType.FILE, None, None),
    ],
)
def test_the_mode_a_commit_gives(kind: EntryType, mode: int | None, lands: int | None) -> None:
    assert landing_mode(kind, mode) == lands
