"""Commit and undo on real files: every approved change lands, undo puts the host back, and
after a crash at any point each file is entirely old or entirely new once recovered."""

from __future__ import annotations

import itertools
import json
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import app.commit
from app.commit import CommitLog, State
from app.staging import Change, ChangeKind, EntryType, SessionStaging, StagedRoot, sha256_file

# More files than one run of app.commit.RUN_LENGTH: copied and renamed by several threads.
BULK = 600


@dataclass
class Project:
    host: Path
    root: StagedRoot
    changes: tuple[Change, ...]
    log: CommitLog


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A host tree and an agent's staged edits of it: files changed, added (some in new
    directories), deleted, a directory deleted, a symlink pointed elsewhere."""
    host = tmp_path / "host"
    (host / "bulk").mkdir(parents=True)
    (host / "old").mkdir()
    (host / "keep.txt").write_text("kept\n")
    (host / "edit.txt").write_text("old edit\n")
    (host / "gone.txt").write_text("gone\n")
    (host / "old" / "e.txt").write_text("in a deleted directory\n")
    (host / "link").symlink_to("keep.txt")
    for i in range(BULK // 2):
        (host / "bulk" / f"f{i:03}").write_text(f"old-{i}\n")
    staging = SessionStaging(tmp_path / "staging", "s1")
    root, upper, _ = staging.add_tree(host, "g1", 1024**2, None)
    (upper / "edit.txt").write_text("new edit\n")
    (upper / "new" / "deeper").mkdir(parents=True)
    (upper / "new" / "deeper" / "n.txt").write_text("new\n")
    (upper / "bulk").mkdir()
    for i in range(BULK):
        (upper / "bulk" / f"f{i:03}").write_text(f"new-{i}\n")
    (upper / "link").symlink_to("edit.txt")
    # Deletions by hand: staged ones are overlay whiteouts, which take CAP_MKNOD to make.
    deletions = (
        Change(host / "gone.txt", ChangeKind.DELETED, EntryType.FILE, root.id,
               old_hash=sha256_file(host / "gone.txt")),
        Change(host / "old", ChangeKind.DELETED, EntryType.DIRECTORY, root.id),
    )
    changes = (*staging.changeset().changes, *deletions)
    return Project(host, root, changes, CommitLog(tmp_path / "state" / "commits"))


def commit(project: Project) -> app.commit.CommitResult:
    return project.log.commit("s1", project.changes, {project.root.id: project.root})


def snapshot(tree: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(tree))
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[name] = ("directory", stat.S_IMODE(st.st_mode))
        else:
            found[name] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


def assert_restored(tree: Path, before: dict[str, tuple[object, ...]]) -> None:
    """The tree is as `before`, but for the directories the commit made: those stay, emptied
    (undo decides what to remove before it has emptied them)."""
    now = snapshot(tree)
    assert {name: now[name] for name in now if name.split(os.sep)[0] != "new"} == before
    assert {name for name in now if name.split(os.sep)[0] == "new"} <= {"new", "new/deeper"}


def leftovers(tree: Path) -> list[str]:
    return [str(p) for p in tree.rglob(".airlock-*")]


def assert_all_new(host: Path) -> None:
    assert all((host / "bulk" / f"f{i:03}").read_text() == f"new-{i}\n" for i in range(BULK))
    assert (host / "edit.txt").read_text() == "new edit\n"
    assert (host / "new" / "deeper" / "n.txt").read_text() == "new\n"
    assert os.readlink(host / "link") == "edit.txt"
    assert not (host / "gone.txt").exists() and not (host / "old").exists()
    assert (host / "keep.txt").read_text() == "kept\n"
    assert leftovers(host) == []


class SimulatedCrash(Exception):
    """The process dying: raised by every call from the chosen one on, in any thread."""


def crash_from_call(number: int, function: Callable[..., Any]) -> Callable[..., Any]:
    calls = itertools.count(1)
    lock = threading.Lock()

    def crashing(*args: Any) -> Any:
        with lock:
            call = next(calls)
        if call >= number:
            raise SimulatedCrash
        return function(*args)

    return crashing


def journal(log: CommitLog) -> dict[str, Any]:
    (path,) = log.root.glob("*/commit.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_commit_applies_every_change_and_undo_restores_the_host(project: Project) -> None:
    before = snapshot(project.host)
    result = commit(project)
    assert result.refused == ()
    assert result.commit is not None and result.commit.state is State.DONE
    assert str(project.host / "new") in result.applied
    assert_all_new(project.host)

    undone = project.log.undo(result.commit.id)
    assert undone.refused == () and undone.commit is not None
    assert_restored(project.host, before)
    assert project.log.record(result.commit.id).undone_by == undone.commit.id


@pytest.mark.parametrize("crash_at", ["copying", "syncing"])
def test_a_crash_while_preparing_is_rolled_back(
    project: Project, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    before = snapshot(project.host)
    if crash_at == "copying":  # part-way through the copies
        monkeypatch.setattr(app.commit, "_prepare", crash_from_call(BULK // 2, app.commit._prepare))
    else:  # every temp file written, none yet known to be on disk
        monkeypatch.setattr(app.commit, "_sync_file_systems",
                            crash_from_call(1, app.commit._sync_file_systems))
    with pytest.raises(SimulatedCrash):
        commit(project)
    monkeypatch.undo()
    written = journal(project.log)
    assert written["state"] == "preparing"
    assert leftovers(project.host)  # temp files, until the rollback
    assert (project.host / "new" / "deeper").is_dir()  # made before the copies started

    (resolved,) = CommitLog(project.log.root).recover()
    assert resolved == written["id"]
    assert snapshot(project.host) == before  # temp files and new directories gone
    assert project.log.record(resolved).state is State.ROLLED_BACK


def test_a_crash_while_applying_is_rolled_forward(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(project.host)
    monkeypatch.setattr(app.commit, "_apply", crash_from_call(BULK // 2, app.commit._apply))
    with pytest.raises(SimulatedCrash):
        commit(project)
    monkeypatch.undo()
    assert journal(project.log)["state"] == "applying"
    bulk = project.host / "bulk"
    contents = [(bulk / f"f{i:03}").read_text() if (bulk / f"f{i:03}").exists() else None
                for i in range(BULK)]
    # Replaced files old or new, added ones absent or new: never anything in between.
    assert all(c in (f"old-{i}\n" if i < BULK // 2 else None, f"new-{i}\n")
               for i, c in enumerate(contents))
    assert 0 < sum(c == f"new-{i}\n" for i, c in enumerate(contents)) < BULK  # cut short

    (resolved,) = CommitLog(project.log.root).recover()
    assert_all_new(project.host)
    assert project.log.record(resolved).state is State.DONE
    project.log.undo(resolved)  # and the commit it finished can be undone like any other
    assert_restored(project.host, before)


def test_refusals_name_each_path_and_the_rest_is_committed(
    project: Project, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (project.host / "escape").symlink_to(outside)
    staged = tmp_path / "staged.txt"
    staged.write_text("x\n")
    hostile = (
        Change(project.host / "escape" / "x.txt", ChangeKind.ADDED, EntryType.FILE,
               project.root.id, staged),
        Change(outside / "y.txt", ChangeKind.ADDED, EntryType.FILE, project.root.id, staged),
        Change(project.host / "vanished.txt", ChangeKind.ADDED, EntryType.FILE,
               project.root.id, tmp_path / "no-such-staged-file"),
    )
    project.changes = (*project.changes, *hostile)
    result = commit(project)
    refused = dict(result.refused)
    assert refused == {
        str(project.host / "escape" / "x.txt"): f"escape in the path of "
        f"{project.host / 'escape' / 'x.txt'} is a symlink or not a directory on the host",
        str(outside / "y.txt"): f"{outside / 'y.txt'} is outside the granted {project.host}",
        str(project.host / "vanished.txt"): "No such file or directory "
        f"({tmp_path / 'no-such-staged-file'})",
    }
    assert list(outside.iterdir()) == []
    assert not (project.host / "vanished.txt").exists()
    assert_all_new(project.host)
