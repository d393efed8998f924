"""The session view: what is mirrored, what is refused, and that revocation empties it."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from app.view import SessionView, anchors_for


@pytest.mark.parametrize(
    ("granted", "anchors"),
    [
        ([("/h/u/notes", True)], ["/h/u/notes"]),
        ([("/h/u/a.md", False)], ["/h/u"]),
        ([("/h/u/a.md", False), ("/h/u/b.md", False)], ["/h/u"]),
        ([("/h/u", True), ("/h/u/notes/x.md", False)], ["/h/u"]),
        ([("/h/u/notes/x.md", False), ("/h/u", True)], ["/h/u"]),
        ([("/h/u/a", True), ("/h/u/b", True)], ["/h/u/a", "/h/u/b"]),
        ([("/h/u/ab", True), ("/h/u/a", True)], ["/h/u/a", "/h/u/ab"]),
        ([], []),
    ],
)
def test_anchors(granted: list[tuple[str, bool]], anchors: list[str]) -> None:
    assert anchors_for((Path(p), d) for p, d in granted) == [Path(a) for a in anchors]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "home" / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("alpha")
    (root / "sub" / "b.md").write_text("beta")
    (root / "private.md").write_text("p")
    (root / "private.md").chmod(0o600)
    (root / "tool").write_text("#!/bin/sh\n")
    (root / "tool").chmod(0o4755)
    (root / "link-out").symlink_to("/etc/passwd")
    (root / "link-in").symlink_to("a.md")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "agent.sock"))
    return root


def test_mirror_links_files_and_refuses_special_ones(tmp_path: Path, tree: Path) -> None:
    view = SessionView(tmp_path / "view")
    result = view.add(tree)
    mirror = view.mirror_path(tree)
    assert (mirror / "a.md").read_text() == "alpha"
    assert os.stat(mirror / "a.md").st_ino == os.stat(tree / "a.md").st_ino  # no bytes copied
    assert (mirror / "sub" / "b.md").read_text() == "beta"
    assert stat.S_IMODE(os.stat(mirror / "private.md").st_mode) == 0o600
    # set-id bits never survive: the file is copied without them
    assert stat.S_IMODE(os.stat(mirror / "tool").st_mode) == 0o755
    assert os.readlink(mirror / "link-out") == "/etc/passwd"  # resolves inside the container
    assert os.readlink(mirror / "link-in") == "a.md"
    assert not os.path.lexists(mirror / "fifo")
    assert not os.path.lexists(mirror / "agent.sock")
    reasons = dict(result.skipped)
    assert reasons[str(tree / "fifo")] == "FIFO files are never granted"
    assert reasons[str(tree / "agent.sock")] == "socket files are never granted"
    assert result.linked == 3 and result.copied == 1


def test_single_file_grant_mirrors_only_that_file(tmp_path: Path, tree: Path) -> None:
    view = SessionView(tmp_path / "view")
    view.add(tree / "a.md")
    mirror = view.mirror_path(tree)
    assert sorted(os.listdir(mirror)) == ["a.md"]


def test_remove_unlinks_in_place_and_prunes(tmp_path: Path, tree: Path) -> None:
    view = SessionView(tmp_path / "view")
    view.add(tree / "a.md")
    view.add(tree / "sub")
    anchor = view.prepare_anchor(tree)
    view.remove(tree / "sub", keep=[tree])
    assert not (anchor / "sub").exists()
    assert (anchor / "a.md").exists()
    view.remove(tree / "a.md", keep=[tree])
    assert anchor.is_dir() and os.listdir(anchor) == []  # the mount point stays
    assert (tree / "a.md").read_text() == "alpha"  # the host file is untouched
    view.discard()
    assert not view.root.exists()


def test_copied_file_is_made_unreadable_before_unlink(tmp_path: Path, tree: Path) -> None:
    view = SessionView(tmp_path / "view")
    view.add(tree / "tool")
    mirror = view.mirror_path(tree / "tool")
    handle = open(mirror, "rb")  # noqa: SIM115 - held open across the revocation on purpose
    try:
        view.remove(tree / "tool")
        assert not mirror.exists()
        assert stat.S_IMODE(os.fstat(handle.fileno()).st_mode) == 0
    finally:
        handle.close()


def test_airlocks_own_directories_are_never_mirrored(tmp_path: Path) -> None:
    # Granting the home folder must not hand over Airlock's state inside it: every session's
    # view (other sessions' grants from anywhere), staging, the audit log, this very view.
    home = tmp_path / "home"
    state = home / ".local" / "state" / "airlock"
    (state / "sessions" / "other" / "view" / "etc").mkdir(parents=True)
    (state / "sessions" / "other" / "view" / "etc" / "granted-elsewhere").write_text("x")
    (state / "state.db").write_text("db")
    (home / "notes.md").write_text("mine")
    view = SessionView(state / "sessions" / "this" / "view", private=(state,))
    result = view.add(home)
    mirrored = view.mirror_path(home)
    assert (mirrored / "notes.md").read_text() == "mine"
    assert (mirrored / ".local" / "state").is_dir()
    assert not (mirrored / ".local" / "state" / "airlock").exists()
    assert (
        str(state),
        "Airlock's own files (its state, other sessions, its sockets) are never granted",
    ) in result.skipped
    inside = view.add(state / "state.db")
    assert not view.mirror_path(state / "state.db").exists() and inside.skipped


def test_a_symlink_the_view_copied_is_replaced_never_followed(tmp_path: Path) -> None:
    # proj/d was a link to a folder of the user's that is not granted; then the user made d
    # a real folder, and it is granted mid-run. Mirroring it must not go through the old link.
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o750)
    (victim / "keep.txt").write_text("kept")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "d").symlink_to(victim)
    view = SessionView(tmp_path / "view")
    view.add(proj)
    assert view.mirror_path(proj / "d").is_symlink()
    (proj / "d").unlink()
    (proj / "d").mkdir(mode=0o777)
    (proj / "d" / "planted.txt").write_text("planted")
    view.add(proj / "d")
    view.add(proj / "d" / "planted.txt", at=proj / "d" / "again.txt")
    assert sorted(os.listdir(victim)) == ["keep.txt"]
    assert stat.S_IMODE(victim.stat().st_mode) == 0o750
    assert (view.mirror_path(proj / "d") / "planted.txt").read_text() == "planted"
    view.remove(proj / "d")
    assert sorted(os.listdir(victim)) == ["keep.txt"]
