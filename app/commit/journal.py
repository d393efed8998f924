"""The commit journal: each commit's record (`commit.json`, replaced durably at each step),
the log's lock, and the markers of commits not yet finished.

A commit runs in two phases recorded here:
1. prepare: the new content of every file is written to a temp file beside its target;
   whatever will be replaced or deleted is kept in the commit's backup directory (a hard link
   where possible); new directories are created. Then one syncfs(2) per file system makes all
   of it durable before the journal says "applying".
2. apply: temp files are renamed over their targets; then mode changes and deletions happen,
   one by one, in order.
A crash in phase 1 is rolled back (temp files and new directories removed, host untouched);
a crash in phase 2 is rolled forward. Temp file names and the directories a commit will create
are in the journal before anything on the host is touched, so a rollback knows everything there
is to remove.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import operator
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.errors import AirlockError
from app.fs import fsync_directory

log = logging.getLogger(__name__)

UNFINISHED = "unfinished"  # in a commit's directory until it is done or rolled back
SCANNED = ".markers"  # in the log's directory: every unfinished commit has its marker


class CommitError(AirlockError):
    """A commit or undo cannot run at all (as opposed to refusing single paths)."""


class CommitAction(StrEnum):
    WRITE = "write"  # a regular file, new or replaced
    SYMLINK = "symlink"
    MKDIR = "mkdir"
    CHMOD = "chmod"
    DELETE = "delete"  # a file or symlink
    DELETE_TREE = "delete-tree"  # a directory and everything in it (moved to the backup)
    RESTORE_TREE = "restore-tree"  # undoing DELETE_TREE: the backup moved back


class State(StrEnum):
    PREPARING = "preparing"
    APPLYING = "applying"
    DONE = "done"
    ROLLED_BACK = "rolled-back"


@dataclass(slots=True)
class Operation:
    action: CommitAction
    target: str
    root: str  # the granted root the target must stay inside
    source: str | None = None  # content to write (a staged file, or a backup when undoing)
    link: str | None = None  # symlink target
    mode: int | None = None
    temp: str | None = None
    backup: str | None = None
    old_hash: str | None = None
    new_hash: str | None = None
    created: bool = False  # MKDIR: we made it (rolled back if the commit is)
    fresh: bool = False  # WRITE, SYMLINK: the target did not exist; it must not be replaced
    move: bool = False  # WRITE: `source` is moved to `target` (decided while preparing)
    replaced: tuple[int, int, int] | None = None  # (inode, size, mtime) of what is replaced


@dataclass(slots=True)
class CommitRecord:
    id: str
    session: str
    created_at: float
    state: State
    operations: list[Operation] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    undo_of: str | None = None
    undone_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self._header(), "operations": operations_json(self.operations)}

    def _header(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "created_at": self.created_at,
            "state": str(self.state),
            "refused": self.refused,
            "undo_of": self.undo_of,
            "undone_by": self.undone_by,
        }

    def journal_text(self, operations_text: str) -> str:
        """The record as JSON, with its operations as serialized by the caller: 10 000 of
        them take a while, and the last two saves of a commit differ only in the state."""
        header = json.dumps(self._header())
        return f'{header[:-1]}, "operations": {operations_text}}}'

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitRecord:
        table = data["operations"]
        rows: Iterable[dict[str, Any]] = (
            (dict(zip(table["fields"], row, strict=True)) for row in table["rows"])
            if isinstance(table, dict)
            else table
        )  # a list of objects: an older journal
        operations = [Operation(**dict(op, action=CommitAction(op["action"]))) for op in rows]
        return cls(
            data["id"],
            data["session"],
            data["created_at"],
            State(data["state"]),
            operations,
            [(str(r[0]), str(r[1])) for r in data["refused"]],
            data.get("undo_of"),
            data.get("undone_by"),
        )

    @property
    def paths(self) -> list[str]:
        return [
            op.target for op in self.operations if op.action is not CommitAction.MKDIR or op.created
        ]


# Operations as JSON: a table, the field names once and a row of values per operation (half
# the text of an object per operation, and faster to make). Not dataclasses.asdict, which is
# the slowest part of a 10 000-file commit; rows are tuples of plain values (the action as a
# string, not the enum member), which the garbage collector stops tracking: 10 000 tracked
# ones can set off a full collection (0.1 s) in the middle of a commit.
_OPERATION_FIELDS = Operation.__slots__  # "action" first


_values_after_action = operator.attrgetter(*_OPERATION_FIELDS[1:])


_ROLLBACK_FIELDS = ("action", "target", "root", "temp", "created")


def operations_json(operations: Iterable[Operation]) -> dict[str, Any]:
    return {
        "fields": _OPERATION_FIELDS,
        "rows": [(op.action.value, *_values_after_action(op)) for op in operations],
    }


def rollback_json(operations: Iterable[Operation]) -> dict[str, Any]:
    # What a rollback needs of each operation, and no more: the first journal is written
    # before anything else can start.
    return {
        "fields": _ROLLBACK_FIELDS,
        "rows": [(op.action.value, op.target, op.root, op.temp, op.created) for op in operations],
    }


@dataclass(frozen=True, slots=True)
class CommitResult:
    commit: CommitRecord | None
    applied: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    returned: tuple[str, ...] = ()  # an undo's: what is staged for review again


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class Journal:
    """`STATE/commits/ID/{commit.json, backup/, unfinished}` and the log's `.lock`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def records(self) -> list[CommitRecord]:
        found: list[CommitRecord] = []
        if not self.root.is_dir():
            return found
        for path in self.root.glob("*/commit.json"):
            try:
                found.append(CommitRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring unreadable commit record %s: %s", path, e)
        return sorted(found, key=lambda r: r.created_at, reverse=True)

    def record(self, commit_id: str) -> CommitRecord:
        path = self.root / commit_id / "commit.json"
        if "/" in commit_id or not path.is_file():
            raise CommitError(f"no commit {commit_id!r} (see `airlock history`)")
        return CommitRecord.from_json(json.loads(path.read_text()))

    def begin(self, record: CommitRecord) -> Path:
        """Makes the record's directory, marked unfinished; returns its backup directory."""
        directory = self.root / record.id
        (directory / "backup").mkdir(parents=True)
        # Made durable by the first save's directory fsync; gone once the commit is done.
        (directory / UNFINISHED).touch()
        return directory / "backup"

    def finish(self, record: CommitRecord) -> None:
        (self.root / record.id / UNFINISHED).unlink()

    def save(self, record: CommitRecord, operations_text: str | None = None) -> None:
        """Replaces the journal durably. `operations_text`: the operations as the journal
        is to hold them, serialized by the caller (the first save holds only what a rollback
        needs; the last reuses the text of the one before)."""
        path = self.root / record.id / "commit.json"
        temp = path.with_suffix(".tmp")
        with open(temp, "w") as f:
            f.write(
                json.dumps(record.to_json())
                if operations_text is None
                else record.journal_text(operations_text)
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        fsync_directory(path.parent)

    @contextlib.contextmanager
    def lock(self, wait: bool) -> Iterator[bool]:
        """The log's lock, held by a commit or undo from start to end and by a recovery:
        across threads and processes (the desktop app and the command line), one at a time;
        above all, a recovery never takes a commit under way for an interrupted one.
        Yields whether it is held (`wait=False` does not wait for it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def unfinished(self) -> Iterator[tuple[Path, CommitRecord]]:
        """The commits that never finished (each marked until it did), with their markers:
        not the whole history, as this runs before every commit."""
        for marker in self._markers():
            directory = marker.parent
            try:
                record = CommitRecord.from_json(json.loads((directory / "commit.json").read_text()))
            except FileNotFoundError:
                # Killed before its first journal: it had touched nothing on the host.
                shutil.rmtree(directory, ignore_errors=True)
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("cannot recover commit %s: unreadable journal: %s", directory.name, e)
                continue
            yield marker, record

    def _markers(self) -> list[Path]:
        scanned = self.root / SCANNED
        if not scanned.exists():
            # A log from before the markers: one look at every journal, once.
            for record in self.records():
                if record.state in (State.PREPARING, State.APPLYING):
                    (self.root / record.id / UNFINISHED).touch()
            scanned.touch()
        return sorted(self.root.glob(f"*/{UNFINISHED}"))
