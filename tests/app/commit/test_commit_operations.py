"""What a commit and an undo plan (app/commit/operations.py), by tables: operations from
reviewed changes, and the reverse of each operation from the facts gathered on the host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.commit.journal import CommitAction as A
from app.commit.journal import Operation
from app.commit.operations import (
    CHANGED,
    NO_BACKUP,
    NOT_A_FILE,
    RECREATED,
    UndoFacts,
    operations_for,
    ordered,
    reverse,
)
from app.staging import Change, ChangeKind, EntryType

ROOT = "/home/u/project"
T = f"{ROOT}/a.txt"
BACKUP = "/state/commits/c1/backup/0"


def write(backup: str | None = BACKUP) -> Operation:
    return Operation(
        A.WRITE,
        T,
        ROOT,
        source="/staged/a.txt",
        mode=0o644,
        old_hash="old",
        new_hash="new",
        backup=backup,
    )


def symlink(backup: str | None = BACKUP) -> Operation:
    return Operation(A.SYMLINK, T, ROOT, link="b.txt", backup=backup)


def delete(backup: str | None = BACKUP) -> Operation:
    return Operation(A.DELETE, T, ROOT, old_hash="old", backup=backup)


def mkdir(created: bool) -> Operation:
    return Operation(A.MKDIR, T, ROOT, mode=0o755, created=created)


@pytest.mark.parametrize(
    ("op", "now", "expected"),
    [
        # a written file: undone only while it still has what the commit wrote
        (
            write(),
            UndoFacts(True, content="new", backup_mode=0o600),
            Operation(A.WRITE, T, ROOT, source=BACKUP, mode=0o600, new_hash="old"),
        ),
        (write(None), UndoFacts(True, content="new"), Operation(A.DELETE, T, ROOT, old_hash="new")),
        (write(), UndoFacts(True, content="edited", backup_mode=0o600), CHANGED),
        (write(), UndoFacts(True, content=NOT_A_FILE, backup_mode=0o600), CHANGED),
        (write(), UndoFacts(False, backup_mode=0o600), CHANGED),
        (write(), UndoFacts(True, content="new"), NO_BACKUP),
        # a symlink: undone while it points where the commit pointed it
        (
            symlink(),
            UndoFacts(True, link="b.txt", backup_link="old.txt"),
            Operation(A.SYMLINK, T, ROOT, link="old.txt"),
        ),
        (symlink(None), UndoFacts(True, link="b.txt"), Operation(A.DELETE, T, ROOT)),
        (symlink(), UndoFacts(True, link="elsewhere", backup_link="old.txt"), CHANGED),
        (symlink(), UndoFacts(True, content="new"), CHANGED),  # a file in its place
        (symlink(), UndoFacts(True, link="b.txt"), NO_BACKUP),
        # a deletion: undone while nothing has come back at the name
        (
            delete(),
            UndoFacts(False, backup_mode=0o640),
            Operation(A.WRITE, T, ROOT, source=BACKUP, mode=0o640, new_hash="old"),
        ),
        (delete(), UndoFacts(False, backup_link="x"), Operation(A.SYMLINK, T, ROOT, link="x")),
        (delete(), UndoFacts(True, content="new"), RECREATED),
        (delete(None), UndoFacts(False), None),
        (delete(), UndoFacts(False), NO_BACKUP),
        # a deleted tree comes back from the backup
        (
            Operation(A.DELETE_TREE, T, ROOT, backup=BACKUP),
            UndoFacts(False),
            Operation(A.RESTORE_TREE, T, ROOT, source=BACKUP),
        ),
        (Operation(A.DELETE_TREE, T, ROOT, backup=BACKUP), UndoFacts(True), RECREATED),
        # a directory the commit made goes only while empty; one it found stays
        (mkdir(True), UndoFacts(True, empty_directory=True), Operation(A.DELETE_TREE, T, ROOT)),
        (mkdir(True), UndoFacts(True), None),
        (mkdir(False), UndoFacts(True, empty_directory=True), None),
        (Operation(A.CHMOD, T, ROOT, mode=0o600), UndoFacts(True), None),
    ],
)
def test_the_reverse_of_each_operation(
    op: Operation, now: UndoFacts, expected: Operation | str | None
) -> None:
    undoing, why = reverse(op, now)
    if isinstance(expected, str):
        assert (undoing, why) == (None, expected)
    else:
        assert (undoing, why) == (expected, None)


def change(path: str, kind: ChangeKind, type_: EntryType = EntryType.FILE, **fields: Any) -> Change:
    return Change(Path(path), kind, type_, "r1", **fields)


def test_directories_come_first_parents_before_children_and_deletions_last_deepest_first() -> None:
    changes = [
        change(f"{ROOT}/gone", ChangeKind.DELETED, EntryType.DIRECTORY),
        change(f"{ROOT}/gone/x", ChangeKind.DELETED),
        change(f"{ROOT}/n/m", ChangeKind.ADDED, EntryType.DIRECTORY, new_mode=0o40755),
        change(f"{ROOT}/f", ChangeKind.MODIFIED),
        change(f"{ROOT}/n", ChangeKind.ADDED, EntryType.DIRECTORY, new_mode=0o40755),
    ]
    assert [str(c.path)[len(ROOT) :] for c in ordered(changes)] == [
        "/n",
        "/n/m",
        "/f",
        "/gone/x",
        "/gone",
    ]


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (
            change(T, ChangeKind.ADDED, staged=Path("/s/a"), new_hash="h", new_mode=0o100600),
            [Operation(A.WRITE, T, ROOT, source="/s/a", mode=0o600, new_hash="h", fresh=True)],
        ),
        (
            change(
                T,
                ChangeKind.MODIFIED,
                staged=Path("/s/a"),
                old_hash="o",
                new_hash="h",
                new_mode=0o100644,
            ),
            [Operation(A.WRITE, T, ROOT, source="/s/a", mode=0o644, old_hash="o", new_hash="h")],
        ),
        (change(T, ChangeKind.DELETED, old_hash="o"), [Operation(A.DELETE, T, ROOT, old_hash="o")]),
        (change(T, ChangeKind.DELETED, EntryType.DIRECTORY), [Operation(A.DELETE_TREE, T, ROOT)]),
        (change(T, ChangeKind.MODE, new_mode=0o100755), [Operation(A.CHMOD, T, ROOT, mode=0o755)]),
        (
            change(T, ChangeKind.ADDED, EntryType.SYMLINK, link_target="b"),
            [Operation(A.SYMLINK, T, ROOT, link="b", fresh=True)],
        ),
        (
            change(T, ChangeKind.ADDED, EntryType.DIRECTORY, new_mode=0o42775),
            [Operation(A.MKDIR, T, ROOT, mode=0o2775)],
        ),
        (
            change(
                T,
                ChangeKind.RENAMED,
                staged=Path("/s/a"),
                old_hash="h",
                new_hash="h",
                new_mode=0o100644,
                renamed_from=Path(f"{ROOT}/old.txt"),
            ),
            [
                Operation(
                    A.WRITE,
                    T,
                    ROOT,
                    source="/s/a",
                    mode=0o644,
                    old_hash="h",
                    new_hash="h",
                    fresh=True,
                ),
                Operation(A.DELETE, f"{ROOT}/old.txt", ROOT, old_hash="h"),
            ],
        ),
    ],
)
def test_the_operations_of_each_change(c: Change, expected: list[Operation]) -> None:
    assert operations_for(c, ROOT) == expected


def test_a_moving_commit_marks_its_writes_to_be_moved() -> None:
    c = change(T, ChangeKind.ADDED, staged=Path("/s/a"), new_hash="h", new_mode=0o100600)
    (op,) = operations_for(c, ROOT, move=True)
    assert op.move
