"""The safe file-system steps (app/fs.py) on real trees: no symlink is followed on the way,
nothing outside the root is reached, and a FIFO in a file's place is refused at once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from app import fs


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    (tmp_path / "root" / "a" / "b" / "f.txt").write_text("inside\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("the user's\n")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    os.mkfifo(tmp_path / "root" / "fifo")
    return tmp_path


def test_open_beneath_walks_real_directories_only(tree: Path) -> None:
    fd = fs.open_beneath(tree / "root", ["a", "b"])
    try:
        assert os.listdir(fd) == ["f.txt"]
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # ELOOP: the symlink is not followed
        fs.open_beneath(tree / "root", ["link"])


def test_a_file_whose_directory_is_a_symlink_is_not_reached(tree: Path) -> None:
    with pytest.raises(OSError):
        fs.open_regular(tree / "root" / "link" / "secret")
    with open(fs.open_regular(tree / "root" / "a" / "b" / "f.txt")) as f:
        assert f.read() == "inside\n"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tree: Path) -> None:
    with pytest.raises(OSError, match="not a regular file"):
        fs.sha256_file(tree / "root" / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        fs.open_regular(tree / "root" / "fifo")


def test_the_hash_is_the_files(tree: Path) -> None:
    fd = fs.open_beneath(tree / "root", ["a", "b"])
    try:
        assert fs.sha256_at(fd, "f.txt") == hashlib.sha256(b"inside\n").hexdigest()
        assert fs.stat_at("missing", fd) is None
        assert fs.identity_at(fd, "f.txt") is not None
        assert not fs.is_symlink_at(fd, "f.txt")
    finally:
        os.close(fd)


def test_directory_handles_refuse_what_is_outside_the_root_or_behind_a_symlink(
    tree: Path,
) -> None:
    root = str(tree / "root")
    with fs.DirectoryHandles() as handles:
        fd = handles.fd(f"{root}/a/b/f.txt", root)
        assert os.listdir(fd) == ["f.txt"]
        with pytest.raises(fs.Refused, match="outside the granted"):
            handles.fd(str(tree / "outside" / "secret"), root)
        with pytest.raises(fs.Refused, match="symlink or not a directory"):
            handles.fd(f"{root}/link/secret", root)
        handles.fd(f"{root}/new/deeper/f", root, create=True)
    assert (tree / "root" / "new" / "deeper").is_dir()
    assert not (tree / "outside" / "deeper").exists()


def test_remove_any_removes_a_tree_but_not_through_a_symlink(tree: Path) -> None:
    fd = os.open(tree / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.remove_any("link", fd)
        fs.remove_any("a", fd)
        fs.remove_any("missing", fd)
    finally:
        os.close(fd)
    assert sorted(os.listdir(tree / "root")) == ["fifo"]
    assert (tree / "outside" / "secret").read_text() == "the user's\n"


def test_a_fifo_swapped_in_for_a_staged_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)  # nobody ever writes it: opening it plainly would wait for good
    with pytest.raises(OSError, match="not a regular file"):
        fs.sha256_file(fifo)
