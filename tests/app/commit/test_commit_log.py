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
import app.commit.apply
import app.fs
from app.commit import CommitLog, State
from app.fs import sha256_file
from app.staging import Change, ChangeKind, EntryType, SessionStaging, StagedRoot

# More files than one run of app.commit.apply.RUN_LENGTH: copied and renamed by several threads.
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
        Change(
            host / "gone.txt",
            ChangeKind.DELETED,
            EntryType.FILE,
            root.id,
            old_hash=sha256_file(host / "gone.txt"),
        ),
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


def crash_after(function: Callable[..., Any]) -> Callable[..., Any]:
    def crashing(*args: Any) -> Any:
        function(*args)
        raise SimulatedCrash

    return crashing


def between_prepare_and_apply(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Runs `action` once, while the commit syncs its prepared files: after every temp file
    is written, before anything is put in place."""
    sync = app.fs.sync_file_systems
    done: list[bool] = []

    def syncing(directories: Any) -> None:
        if not done:
            done.append(True)
            action()
        sync(directories)

    monkeypatch.setattr(app.fs, "sync_file_systems", syncing)


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


@pytest.mark.parametrize("crash_at", ["copying", "prepared"])
def test_a_crash_while_preparing_is_rolled_back(
    project: Project, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    before = snapshot(project.host)
    if crash_at == "copying":  # part-way through the copies
        monkeypatch.setattr(
            app.commit.apply,
            "prepare_one",
            crash_from_call(BULK // 2, app.commit.apply.prepare_one),
        )
    else:  # every temp file written, not all of them on disk yet
        monkeypatch.setattr(
            app.commit.apply, "prepare_all", crash_after(app.commit.apply.prepare_all)
        )
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
    monkeypatch.setattr(
        app.commit.apply, "apply_one", crash_from_call(BULK // 2, app.commit.apply.apply_one)
    )
    with pytest.raises(SimulatedCrash):
        commit(project)
    monkeypatch.undo()
    assert journal(project.log)["state"] == "applying"
    bulk = project.host / "bulk"
    contents = [
        (bulk / f"f{i:03}").read_text() if (bulk / f"f{i:03}").exists() else None
        for i in range(BULK)
    ]
    # Replaced files old or new, added ones absent or new: never anything in between.
    assert all(
        c in (f"old-{i}\n" if i < BULK // 2 else None, f"new-{i}\n") for i, c in enumerate(contents)
    )
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
        Change(
            project.host / "escape" / "x.txt",
            ChangeKind.ADDED,
            EntryType.FILE,
            project.root.id,
            staged,
        ),
        Change(outside / "y.txt", ChangeKind.ADDED, EntryType.FILE, project.root.id, staged),
        Change(
            project.host / "vanished.txt",
            ChangeKind.ADDED,
            EntryType.FILE,
            project.root.id,
            tmp_path / "no-such-staged-file",
        ),
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


def test_files_in_directories_not_committed_themselves_still_land(
    project: Project, tmp_path: Path
) -> None:
    # Committing only some paths can leave their new parent directories out: each copying
    # thread then makes what is missing, and neither may trip over the other's.
    staged = tmp_path / "staged"
    staged.mkdir()
    changes = []
    for i in range(BULK):
        (staged / f"g{i:03}").write_text(f"g-{i}\n")
        changes.append(
            Change(
                project.host / "made" / "deep" / f"g{i:03}",
                ChangeKind.ADDED,
                EntryType.FILE,
                project.root.id,
                staged / f"g{i:03}",
            )
        )
    result = project.log.commit("s1", changes, {project.root.id: project.root})
    assert result.refused == ()
    made = project.host / "made" / "deep"
    assert sorted(p.name for p in made.iterdir()) == [f"g{i:03}" for i in range(BULK)]


def staged_path(project: Project, name: str) -> Path:
    (change,) = (c for c in project.changes if c.path == project.host / name)
    assert change.staged is not None
    return change.staged


def test_a_staged_file_rewritten_after_review_is_refused(project: Project) -> None:
    # The agent still runs while the user reviews: what it writes after the changeset was
    # read (and shown) must not ride along with the commit.
    staged_path(project, "edit.txt").write_text("sneaked in after review\n")
    staged_path(project, "bulk/f007").write_text("new-7\n and more\n")
    result = commit(project)
    refused = dict(result.refused)
    assert set(refused) == {str(project.host / "edit.txt"), str(project.host / "bulk/f007")}
    assert all(
        why.startswith("changed since it was reviewed (reviewed sha256 ")
        for why in refused.values()
    )
    assert (project.host / "edit.txt").read_text() == "old edit\n"
    assert (project.host / "bulk" / "f007").read_text() == "old-7\n"
    assert (project.host / "bulk" / "f008").read_text() == "new-8\n"
    assert leftovers(project.host) == []


def test_a_fifo_swapped_in_for_a_staged_file_is_refused_without_hanging(project: Project) -> None:
    staged = staged_path(project, "edit.txt")
    staged.unlink()
    os.mkfifo(staged)  # opening it for reading would block until a writer came
    results: list[app.commit.CommitResult] = []
    worker = threading.Thread(target=lambda: results.append(commit(project)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the commit hung on a FIFO"
    (result,) = results
    assert dict(result.refused) == {str(project.host / "edit.txt"): "a FIFO, not a regular file"}
    assert (project.host / "edit.txt").read_text() == "old edit\n"


def test_host_files_created_or_changed_during_the_commit_are_kept(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between preparing and applying, the user saves a file at a path the agent added, and
    # edits one the agent changed: neither is replaced.
    def user_at_work() -> None:
        (project.host / "bulk" / "f500").write_text("the user's own\n")
        (project.host / "bulk" / "f010").write_text("edited by the user\n")

    between_prepare_and_apply(monkeypatch, user_at_work)
    result = commit(project)
    assert dict(result.refused) == {
        str(
            project.host / "bulk" / "f500"
        ): "conflict: created on the host while being committed; the host's file was kept",
        str(
            project.host / "bulk" / "f010"
        ): "conflict: changed on the host while being committed; the host's version was kept",
    }
    assert (project.host / "bulk" / "f500").read_text() == "the user's own\n"
    assert (project.host / "bulk" / "f010").read_text() == "edited by the user\n"
    assert (project.host / "bulk" / "f011").read_text() == "new-11\n"
    assert leftovers(project.host) == []
    assert result.commit is not None
    assert str(project.host / "bulk" / "f500") not in result.applied
    recorded = project.log.record(result.commit.id)
    assert str(project.host / "bulk" / "f010") not in recorded.paths

    project.log.undo(result.commit.id)  # undo leaves the user's files alone too
    assert (project.host / "bulk" / "f500").read_text() == "the user's own\n"
    assert (project.host / "bulk" / "f010").read_text() == "edited by the user\n"
    assert (project.host / "bulk" / "f011").read_text() == "old-11\n"


def staged_snapshot(project: Project) -> dict[Path, bytes]:
    """The staged files' contents, by where they are staged."""
    return {
        c.staged: c.staged.read_bytes()
        for c in project.changes
        if c.staged is not None and c.type is EntryType.FILE
    }


def commit_moving(project: Project) -> app.commit.CommitResult:
    return project.log.commit("s1", project.changes, {project.root.id: project.root}, move=True)


def test_an_ended_sessions_files_are_moved_into_place(project: Project) -> None:
    before = snapshot(project.host)
    staged = staged_snapshot(project)
    edit = staged_path(project, "edit.txt")
    inode = edit.stat().st_ino
    result = commit_moving(project)
    assert result.refused == ()
    assert_all_new(project.host)
    assert (project.host / "edit.txt").stat().st_ino == inode  # moved, not copied
    assert not edit.exists()
    assert {c.path: c.path.read_bytes() for c in project.changes if c.staged in staged} == {
        c.path: staged[c.staged] for c in project.changes if c.staged in staged
    }

    assert result.commit is not None
    project.log.undo(result.commit.id)
    assert_restored(project.host, before)


@pytest.mark.parametrize("crash_at", ["preparing", "applying"])
def test_a_crash_while_moving_loses_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    before = snapshot(project.host)
    staged = staged_snapshot(project)
    function = "prepare_one" if crash_at == "preparing" else "apply_one"
    monkeypatch.setattr(
        app.commit.apply, function, crash_from_call(BULK // 2, getattr(app.commit.apply, function))
    )
    with pytest.raises(SimulatedCrash):
        commit_moving(project)
    monkeypatch.undo()
    CommitLog(project.log.root).recover()
    if crash_at == "preparing":  # rolled back: nothing had moved yet
        assert snapshot(project.host) == before
        assert {path: path.read_bytes() for path in staged} == staged
        assert commit_moving(project).refused == ()  # and it can be committed again
    else:  # rolled forward: every staged file is in place, none is lost on the way
        assert not any(path.exists() for path in staged)
    assert_all_new(project.host)


def test_a_file_to_move_that_meets_a_conflict_stays_staged(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    between_prepare_and_apply(
        monkeypatch, lambda: (project.host / "bulk" / "f500").write_text("the user's own\n")
    )
    result = commit_moving(project)
    assert [path for path, _ in result.refused] == [str(project.host / "bulk" / "f500")]
    assert (project.host / "bulk" / "f500").read_text() == "the user's own\n"
    assert staged_path(project, "bulk/f500").read_text() == "new-500\n"  # kept, to review
    assert not staged_path(project, "bulk/f501").exists()  # committed: moved
    assert leftovers(project.host) == []


def test_files_that_cannot_stand_for_a_copy_are_copied(project: Project) -> None:
    # A staged file with a second name (which something could still write through) is not
    # moved, nor one with extended attributes (an ACL letting others in, a label): a copy
    # carries none. Their staged copies stay where they were.
    edit = staged_path(project, "edit.txt")
    os.link(edit, edit.with_name("second-name"))
    tagged = staged_path(project, "bulk/f000")
    os.setxattr(tagged, "user.planted", b"by the agent")
    bookkept = staged_path(project, "bulk/f001")
    os.setxattr(bookkept, "user.overlay.origin", b"the overlay's")
    inode = bookkept.stat().st_ino
    result = commit_moving(project)
    assert result.refused == ()
    assert edit.read_text() == "new edit\n" and tagged.read_text() == "new-0\n"
    assert (project.host / "edit.txt").read_text() == "new edit\n"
    assert (project.host / "edit.txt").stat().st_ino != edit.stat().st_ino
    assert (project.host / "bulk" / "f000").read_text() == "new-0\n"
    assert os.listxattr(project.host / "bulk" / "f000") == []
    # the overlay's own attributes are not the agent's doing: dropped, and the file moved
    assert (project.host / "bulk" / "f001").stat().st_ino == inode
    assert os.listxattr(project.host / "bulk" / "f001") == []


def test_a_file_that_cannot_be_put_in_place_is_refused_and_the_commit_ends(
    project: Project, tmp_path: Path
) -> None:
    # A file to replace what is a directory on the host: the rename fails. That path is
    # refused, and the commit still finishes (a journal left "applying" would fail the same
    # way at every start).
    (project.host / "docs").mkdir()
    (project.host / "docs" / "inside.txt").write_text("the user's\n")
    staged = tmp_path / "docs-as-a-file"
    staged.write_text("a file now\n")
    project.changes = (
        *project.changes,
        Change(
            project.host / "docs",
            ChangeKind.MODIFIED,
            EntryType.FILE,
            project.root.id,
            staged,
            new_hash=sha256_file(staged),
        ),
    )
    result = commit(project)
    (refused,) = result.refused
    assert refused[0] == str(project.host / "docs")
    assert refused[1].startswith("cannot be put in place: Is a directory")
    assert result.commit is not None and result.commit.state is State.DONE
    assert (project.host / "docs" / "inside.txt").read_text() == "the user's\n"
    assert_all_new(project.host)
    assert CommitLog(project.log.root).recover() == []


def test_recovery_reads_only_commits_that_never_finished(
    project: Project, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It runs before every commit: a long history must not be read each time.
    done = commit(project)
    assert done.commit is not None
    (project.log.root / done.commit.id / "commit.json").write_text("{ not read")
    assert project.log.recover() == []
    assert "unreadable" not in caplog.text


def test_an_interrupted_commit_from_before_the_markers_is_still_recovered(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        app.commit.apply, "apply_one", crash_from_call(BULK // 2, app.commit.apply.apply_one)
    )
    with pytest.raises(SimulatedCrash):
        commit(project)
    monkeypatch.undo()
    for marker in [*project.log.root.glob("*/unfinished"), project.log.root / ".markers"]:
        marker.unlink(missing_ok=True)  # as an older Airlock left its log,
    (path,) = project.log.root.glob("*/commit.json")
    written = json.loads(path.read_text())
    table = written["operations"]  # its operations a list of objects, not a table
    written["operations"] = [dict(zip(table["fields"], row, strict=True)) for row in table["rows"]]
    path.write_text(json.dumps(written))
    (resolved,) = CommitLog(project.log.root).recover()
    assert project.log.record(resolved).state is State.DONE
    assert_all_new(project.host)
    assert CommitLog(project.log.root).recover() == []


def test_a_recovery_leaves_a_commit_under_way_alone(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The review window reloads (and so recovers) while another thread, or the command
    # line, commits: that commit is not an interrupted one, and must not be rolled back.
    recovered: list[list[str]] = []
    between_prepare_and_apply(
        monkeypatch, lambda: recovered.append(CommitLog(project.log.root).recover())
    )
    result = commit(project)
    assert recovered == [[]]
    assert result.refused == ()
    assert_all_new(project.host)
