"""Commit and undo: approved staged changes applied to the host, crash-safe and reversible.

A commit runs in two phases recorded in a journal (`commit.json`, fsynced at each step):
1. prepare: the new content of every file is written to a temp file beside its target;
   whatever will be replaced or deleted is kept in the commit's backup directory (a hard link
   where possible); new directories are created. Then one syncfs(2) per file system makes all
   of it durable (writing out began while the copies were still being made) before the
   journal says "applying".
2. apply: temp files are renamed over their targets (by a few threads, each file on its
   own); then mode changes and deletions happen, one by one, in order.
A crash in phase 1 is rolled back (temp files and new directories removed, host untouched);
a crash in phase 2 is rolled forward. Renames are atomic, so at every moment each file is
entirely old or entirely new. `recover()` runs before any new commit and at start-up.

Temp file names and the directories a commit will create are in the journal before anything
on the host is touched, so a rollback knows everything there is to remove.

Every path is reached from its granted root one component at a time with O_NOFOLLOW, so
neither the agent nor a race on the host can redirect a write through a symlink.

Once the session has ended (its container is gone, and with it every process that could
still write a staged file), a staged file on the same mount as its target is moved into
place rather than copied: it needs no temp file, as it is complete and nobody writes it; the
one syncfs makes it durable where it is, and applying renames it over its target. Until then
it has not moved, so a rollback has nothing to undo for it.

What lands is what was reviewed: each copy is hashed (Airlock's own temp file, which the agent
cannot reach) and refused unless it matches the change's hash, so an agent that rewrites a
staged file while it is being committed gets nothing through. Nor is the host's own work
overwritten: a new file is put in place only if nothing has appeared at its name meanwhile
(renameat2 RENAME_NOREPLACE), and a file is replaced only if it is still the one kept for undo.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import operator
import os
import secrets
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from app.errors import AirlockError
from app.staging import (
    Change,
    ChangeKind,
    EntryType,
    StagedRoot,
    open_directory_of,
    sha256_file,
    sync_file_system,
)
from app.view import special_kind

log = logging.getLogger(__name__)

# Fault injection for the crash tests: seconds to pause after each applied operation.
PAUSE_VARIABLE = "AIRLOCK_COMMIT_PAUSE"

# Files are copied, and renamed into place, by a few threads: the work is system calls, which
# release the GIL, and a file system keeps more than one core busy. Each task takes a run of
# neighbouring operations, which mostly share their parent directory's handle.
THREADS = 2
RUN_LENGTH = 256

CHUNK = 1 << 20  # bytes read at a time to hash a copy


UNFINISHED = "unfinished"  # in a commit's directory until it is done or rolled back
SCANNED = ".markers"  # in the log's directory: every unfinished commit has its marker


class CommitError(AirlockError):
    """A commit or undo cannot run at all (as opposed to refusing single paths)."""


class Action(StrEnum):
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
    action: Action
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
        return {**self._header(), "operations": _operations_json(self.operations)}

    def _header(self) -> dict[str, Any]:
        return {"id": self.id, "session": self.session, "created_at": self.created_at,
                "state": str(self.state), "refused": self.refused, "undo_of": self.undo_of,
                "undone_by": self.undone_by}

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
            if isinstance(table, dict) else table)  # a list of objects: an older journal
        operations = [Operation(**dict(op, action=Action(op["action"]))) for op in rows]
        return cls(data["id"], data["session"], data["created_at"], State(data["state"]),
                   operations, [(str(r[0]), str(r[1])) for r in data["refused"]],
                   data.get("undo_of"), data.get("undone_by"))

    @property
    def paths(self) -> list[str]:
        return [op.target for op in self.operations if op.action is not Action.MKDIR or
                op.created]


# Operations as JSON: a table, the field names once and a row of values per operation (half
# the text of an object per operation, and faster to make). Not dataclasses.asdict, which is
# the slowest part of a 10 000-file commit; rows are tuples of plain values (the action as a
# string, not the enum member), which the garbage collector stops tracking: 10 000 tracked
# ones can set off a full collection (0.1 s) in the middle of a commit.
_OPERATION_FIELDS = Operation.__slots__  # "action" first
_values_after_action = operator.attrgetter(*_OPERATION_FIELDS[1:])
_ROLLBACK_FIELDS = ("action", "target", "root", "temp", "created")


def _operations_json(operations: Iterable[Operation]) -> dict[str, Any]:
    return {"fields": _OPERATION_FIELDS,
            "rows": [(op.action.value, *_values_after_action(op)) for op in operations]}


def _rollback_json(operations: Iterable[Operation]) -> dict[str, Any]:
    # What a rollback needs of each operation, and no more: the first journal is written
    # before anything else can start.
    return {"fields": _ROLLBACK_FIELDS,
            "rows": [(op.action.value, op.target, op.root, op.temp, op.created)
                     for op in operations]}


@dataclass(frozen=True, slots=True)
class CommitResult:
    commit: CommitRecord | None
    applied: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]


class CommitLog:
    """`STATE/commits/ID/{commit.json, backup/}`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # history

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

    # commit

    def commit(self, session: str, changes: Sequence[Change],
               roots: dict[str, StagedRoot], move: bool = False) -> CommitResult:
        """`move`: the session has ended, nothing can write its staged files any more; they
        are moved into place where the file system allows, instead of copied."""
        with self._lock(wait=True):
            self._recover()
            return self._commit(session, changes, roots, move)

    def _commit(self, session: str, changes: Sequence[Change],
                roots: dict[str, StagedRoot], move: bool) -> CommitResult:
        refused: list[tuple[str, str]] = [
            (str(c.path), "; ".join(c.problems)) for c in changes if c.problems]
        accepted = [c for c in changes if not c.problems]
        record = CommitRecord(_new_id(), session, time.time(), State.PREPARING, refused=refused)
        host_roots = {root_id: str(root.host_root) for root_id, root in roots.items()}
        for change in _ordered(accepted):
            record.operations.extend(_operations(change, host_roots[change.root], move))
        return self._run(record)

    def undo(self, commit_id: str) -> CommitResult:
        with self._lock(wait=True):
            self._recover()
            return self._undo(commit_id)

    def _undo(self, commit_id: str) -> CommitResult:
        original = self.record(commit_id)
        if original.state is not State.DONE:
            raise CommitError(f"commit {commit_id} is {original.state}: nothing to undo")
        if original.undone_by:
            raise CommitError(f"commit {commit_id} was already undone by {original.undone_by}")
        record = CommitRecord(_new_id(), original.session, time.time(), State.PREPARING,
                              undo_of=commit_id)
        for op in reversed(original.operations):
            reverse, why = _reverse(op)
            if why:
                record.refused.append((op.target, why))
            elif reverse is not None:
                record.operations.append(reverse)
        result = self._run(record)
        if result.commit is not None and result.applied:
            original.undone_by = record.id
            self._save(original)
        return result

    def _run(self, record: CommitRecord) -> CommitResult:
        directory = self.root / record.id
        (directory / "backup").mkdir(parents=True)
        # Made durable by the first save's directory fsync; gone once the commit is done.
        (directory / UNFINISHED).touch()
        _plan(record)
        self._save(record, json.dumps(_rollback_json(record.operations)))
        with _EarlyWriteback({_split(op.root)[0] for op in record.operations}):
            failures = _prepare_all(record.operations, str(directory / "backup"))
        refused = list(record.refused)
        prepared: list[Operation] = []
        for index, op in enumerate(record.operations):
            if index in failures:
                refused.append((op.target, failures[index]))
            else:
                prepared.append(op)
        record.operations = prepared
        record.refused = refused
        target_directories = {_split(op.target)[0] for op in prepared}
        # One syncfs per file system instead of an fsync per file: the same guarantee (every
        # temp file is on disk before the journal says "applying"), a fraction of the cost.
        # It waits for the disk without the GIL: meanwhile the journal text is made.
        with ThreadPoolExecutor(1, thread_name_prefix="airlock-sync") as syncing:
            synced = syncing.submit(_sync_file_systems, target_directories | {str(directory)})
            operations_text = json.dumps(_operations_json(record.operations))
            synced.result()
        record.state = State.APPLYING
        self._save(record, operations_text)
        conflicts = _apply_all(record.operations,
                               float(os.environ.get(PAUSE_VARIABLE, "0") or 0))
        _sync_directories(target_directories)
        record.state = State.DONE
        if conflicts:
            record.operations = [op for op in record.operations if id(op) not in conflicts]
            refused.extend((op.target, why) for op, why in conflicts.values())
            operations_text = json.dumps(_operations_json(record.operations))
        self._save(record, operations_text)
        (directory / UNFINISHED).unlink()
        applied = tuple(op.target for op in record.operations
                        if op.action is not Action.MKDIR or op.created)
        return CommitResult(record, applied, tuple(refused))

    def _save(self, record: CommitRecord, operations_text: str | None = None) -> None:
        """Replaces the journal durably. `operations_text`: the operations as the journal
        is to hold them, serialized by the caller (the first save holds only what a rollback
        needs; the last reuses the text of the one before)."""
        path = self.root / record.id / "commit.json"
        temp = path.with_suffix(".tmp")
        with open(temp, "w") as f:
            f.write(json.dumps(record.to_json()) if operations_text is None
                    else record.journal_text(operations_text))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        _fsync_dir(path.parent)

    # recovery

    @contextlib.contextmanager
    def _lock(self, wait: bool) -> Iterator[bool]:
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

    def recover(self) -> list[str]:
        """Finishes or rolls back commits a crash interrupted; returns their ids. Nothing to
        do while a commit is under way (its process is alive: it was not interrupted)."""
        with self._lock(wait=False) as held:
            return self._recover() if held else []

    def _recover(self) -> list[str]:
        """Reads only the journals of commits that never finished (each marked until it
        did), not the whole history: it runs before every commit."""
        resolved = []
        for marker in self._unfinished():
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
            if record.state is State.PREPARING:
                with _Parents() as parents:
                    # Backwards: a new directory's contents go before the directory.
                    for op in reversed(record.operations):
                        _roll_back(op, parents)
                record.state = State.ROLLED_BACK
            elif record.state is State.APPLYING:
                with _Parents() as parents:
                    for op in record.operations:
                        if why := _apply(op, parents):
                            log.warning("not applying %s to %s: %s", op.action, op.target, why)
                _sync_directories({os.path.dirname(op.target) for op in record.operations})
                record.state = State.DONE
            else:
                marker.unlink()  # done, but killed before the marker went
                continue
            self._save(record)
            marker.unlink()
            resolved.append(record.id)
            log.warning("commit %s was interrupted; it is now %s", record.id, record.state)
        return resolved

    def _unfinished(self) -> list[Path]:
        scanned = self.root / SCANNED
        if not scanned.exists():
            # A log from before the markers: one look at every journal, once.
            for record in self.records():
                if record.state in (State.PREPARING, State.APPLYING):
                    (self.root / record.id / UNFINISHED).touch()
            scanned.touch()
        return sorted(self.root.glob(f"*/{UNFINISHED}"))


class _Refused(Exception):
    pass


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename or ''})".replace(" ()", "")
    return str(error)


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _ordered(changes: Sequence[Change]) -> list[Change]:
    """New directories first, parents before children; deletions last, deepest first; the
    rest (which may go in any order) as they come."""
    def depth(change: Change) -> tuple[int, str]:
        path = str(change.path)
        return path.count(os.sep), path

    deleted, directories, rest = [], [], []
    for change in changes:
        if change.kind is ChangeKind.DELETED:
            deleted.append(change)
        elif change.type is EntryType.DIRECTORY:
            directories.append(change)
        else:
            rest.append(change)
    deleted.sort(key=lambda change: (-str(change.path).count(os.sep), str(change.path)))
    return [*sorted(directories, key=depth), *rest, *deleted]


def _operations(change: Change, root: str, move: bool = False) -> list[Operation]:
    target = str(change.path)
    mode = change.mode  # exactly what the listing showed
    if change.kind is ChangeKind.DELETED:
        action = Action.DELETE_TREE if change.type is EntryType.DIRECTORY else Action.DELETE
        return [Operation(action, target, root, old_hash=change.old_hash)]
    if change.kind is ChangeKind.MODE:
        return [Operation(Action.CHMOD, target, root, mode=mode)]
    fresh = change.kind is ChangeKind.ADDED or change.kind is ChangeKind.RENAMED
    if change.type is EntryType.DIRECTORY:
        op = Operation(Action.MKDIR, target, root, mode=mode)
    elif change.type is EntryType.SYMLINK:
        op = Operation(Action.SYMLINK, target, root, link=change.link_target, fresh=fresh)
    else:
        op = Operation(Action.WRITE, target, root, source=str(change.staged), mode=mode,
                       old_hash=change.old_hash, new_hash=change.new_hash, fresh=fresh,
                       move=move)
    if change.kind is ChangeKind.RENAMED and change.renamed_from is not None:
        return [op, Operation(Action.DELETE, str(change.renamed_from), root,
                              old_hash=change.old_hash)]
    return [op]


# One component at a time, never following a symlink: the only safe way into a host tree.

class _Parents:
    """Handles on the target's parent directories, each reached from the granted root one
    component at a time with O_NOFOLLOW, kept open (a bounded number) for the next target in
    the same directory. A handle is valid until the next call. Not thread-safe: one per
    thread."""

    LIMIT = 256

    def __init__(self) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._own: OrderedDict[str, int] = OrderedDict()  # Airlock's directories
        self._mounts: dict[str, int] = {}
        self._prefixes: dict[str, str] = {}  # root -> root + "/"

    def __enter__(self) -> _Parents:
        return self

    def __exit__(self, *exc: object) -> None:
        for fds in (self._fds, self._own):
            for fd in fds.values():
                os.close(fd)
            fds.clear()

    def _cache(self, key: str, fd: int, fds: OrderedDict[str, int] | None = None) -> int:
        fds = self._fds if fds is None else fds
        fds[key] = fd
        while len(fds) > self.LIMIT:
            os.close(fds.popitem(last=False)[1])
        return fd

    def mount_of(self, directory: str, dir_fd: int) -> int:
        """The mount a directory (open as `dir_fd`) is on: a rename within one cannot fail
        with EXDEV, while one file system bind-mounted twice is two mounts."""
        mount = self._mounts.get(directory)
        if mount is None:
            with open(f"/proc/self/fdinfo/{dir_fd}", "rb") as f:
                mount = next(int(line.split()[1]) for line in f if line.startswith(b"mnt_id:"))
            self._mounts[directory] = mount
        return mount

    def own_directory(self, path: str) -> tuple[int, str]:
        """A kept handle on the directory of a file of Airlock's own, and the file's name."""
        directory, name = _split(path)
        dir_fd = self._own.get(directory)
        if dir_fd is None:
            # Not through a symlink in its place: a save's directory is the agent's.
            dir_fd = self._cache(directory, open_directory_of(path)[0], self._own)
        else:
            self._own.move_to_end(directory)
        return dir_fd, name

    def open_own_file(self, path: str) -> int:
        """Opens a file of Airlock's own (staged content, a backup) for reading, as opening
        its full path would, but through a kept handle on its directory: walking the whole
        path again for each of 10 000 files is a good part of a commit's time."""
        try:
            dir_fd, name = self.own_directory(path)
            # O_NONBLOCK: a FIFO swapped in for a staged file must not hang the commit
            # (it is then refused as not a regular file).
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                           dir_fd=dir_fd)
        except OSError as e:
            e.filename = path  # what a refusal names, as if the full path had been opened
            raise

    def fd(self, target: str, root: str, create: bool = False) -> int:
        # Plain string operations: this runs once per committed file.
        if target == root:
            key = os.path.dirname(root)
            if key not in self._fds:
                self._cache(key, os.open(key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            return self._fds[key]
        prefix = self._prefixes.get(root)
        if prefix is None:
            prefix = self._prefixes[root] = root + os.sep
        if not target.startswith(prefix):
            raise _Refused(f"{target} is outside the granted {root}")
        parent = target.rpartition(os.sep)[0]
        cached = self._fds.get(parent)
        if cached is not None:
            self._fds.move_to_end(parent)
            return cached
        if root not in self._fds:
            self._cache(root, os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        fd, current = self._fds[root], root
        for part in parent[len(root) + 1:].split(os.sep) if parent != root else ():
            current = current + os.sep + part
            known = self._fds.get(current)
            fd = known if known is not None else self._cache(
                current, self._open_child(fd, part, target, create))
        return fd

    @staticmethod
    def _open_child(dir_fd: int, part: str, target: str, create: bool) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(part, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise
            # Another thread of the same commit may make it first.
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=dir_fd)
            return os.open(part, flags, dir_fd=dir_fd)
        except OSError as e:
            raise _Refused(f"{part} in the path of {target} is a symlink or not a directory "
                           "on the host") from e


def _split(path: str) -> tuple[str, str]:
    """os.path.split for the absolute, normalized paths of operations, at a fraction of its
    cost: it runs a few times for each of 10 000 files."""
    parent, _, name = path.rpartition(os.sep)
    return parent or os.sep, name


def _exists(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _keep(name: str, dir_fd: int, backup: str) -> tuple[str | None, os.stat_result | None]:
    """Keeps what is at `name` for undo: a hard link, else a copy (else a moved tree).
    Returns the backup's path and what was kept."""
    st = _exists(name, dir_fd)
    if st is None:
        return None, None
    if stat.S_ISDIR(st.st_mode):
        return None, st  # trees are moved, not copied, when applied
    try:
        os.link(name, backup, src_dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=dir_fd), backup)
        else:
            _copy_fd_file(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                                  dir_fd=dir_fd), backup, stat.S_IMODE(st.st_mode))
    return backup, st


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _copy_fd_file(source_fd: int, destination: str, mode: int,
                  dir_fd: int | None = None, expected: str | None = None) -> None:
    """Copies an open regular file (the kernel moves the bytes) into a new file; a copy that
    fails leaves no part behind. `expected`: the sha256 the copy must have (it is read back
    from the copy, which is Airlock's alone, so the source changing meanwhile cannot slip
    anything past the check)."""
    try:
        st = os.fstat(source_fd)
        if not stat.S_ISREG(st.st_mode):
            what = "directory" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
            raise _Refused(f"a {what}, not a regular file")
        mode &= 0o777
        kept = mode & ~_umask() == mode  # made with its mode: no fchmod
        out = os.open(destination, (os.O_RDWR if expected else os.O_WRONLY) | os.O_CREAT |
                      os.O_EXCL | os.O_CLOEXEC, mode if kept else 0o600, dir_fd=dir_fd)
        # A default ACL on the target's folder takes the place of the umask: the new file
        # then has fewer bits than asked for. One fstat finds out; fchmod makes it exact.
        kept = kept and stat.S_IMODE(os.fstat(out).st_mode) == mode
        try:
            try:
                _copy_bytes(source_fd, out, st.st_size)
                if expected is not None and (copied := _digest(out)) != expected:
                    raise _Refused(f"changed since it was reviewed (reviewed sha256 "
                                   f"{expected[:16]}, now {copied[:16]}): not committed; "
                                   "review it again")
                if not kept:
                    os.fchmod(out, mode)
            finally:
                os.close(out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(destination, dir_fd=dir_fd)
            raise
    finally:
        os.close(source_fd)


def _digest(fd: int) -> str:
    """sha256 of a file of Airlock's own that nobody else writes: a short read is its end."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        digest.update(chunk)
        if len(chunk) < CHUNK:
            return digest.hexdigest()
        offset += len(chunk)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, for every thread)."""
    global _umask_value
    if _umask_value is None:
        try:
            with open("/proc/self/status") as f:
                line = next(line for line in f if line.startswith("Umask:"))
            _umask_value = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError):
            _umask_value = 0o777  # unknown: every file gets an explicit fchmod
    return _umask_value


_umask_value: int | None = None


def _forget_umask() -> None:
    """Read afresh for each commit: a umask is rarely changed, but may be."""
    global _umask_value
    _umask_value = None


def _copy_bytes(source: int, target: int, size: int) -> None:
    """Copies `source` (`size` bytes, as it was when opened) into `target`, both unread."""
    try:
        # Most files take one call: a loop, and a function of its own, only for the rest.
        remaining = size - os.copy_file_range(source, target, size) if size else 0
        while remaining > 0:
            sent = os.copy_file_range(source, target, min(remaining, 1 << 30))
            if sent == 0:
                return  # the file shrank meanwhile: what there is was copied
            remaining -= sent
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        # Across file systems on some kernels: plain reads and writes.
        os.lseek(source, 0, os.SEEK_SET)
        os.lseek(target, 0, os.SEEK_SET)
        os.ftruncate(target, 0)
        while chunk := os.read(source, 1 << 20):
            os.write(target, chunk)


def _plan(record: CommitRecord) -> None:
    """Names the temp files and marks the directories the commit will create, before anything
    is touched: the first journal then holds everything a rollback has to remove."""
    with _Parents() as parents:
        for index, op in enumerate(record.operations):
            if op.action in (Action.WRITE, Action.SYMLINK):
                op.temp = f".airlock-{record.id}-{index}.tmp"
            elif op.action is Action.MKDIR:
                op.created = _absent(op, parents)


def _absent(op: Operation, parents: _Parents) -> bool:
    try:
        return _exists(os.path.basename(op.target), parents.fd(op.target, op.root)) is None
    except FileNotFoundError:
        return True  # in a new directory too
    except (OSError, _Refused):
        return False  # preparing it will say why not


def _prepare_all(operations: Sequence[Operation], backup_dir: str) -> dict[int, str]:
    """Prepares the operations; returns why each one that cannot be was refused, by index.
    New directories are made first, in order (parents before children), so that the copies
    can then run in any order, in parallel."""
    failures: dict[int, str] = {}
    with _Parents() as parents:
        for index, op in enumerate(operations):
            if op.action is Action.MKDIR:
                try:
                    _make_directory(op, parents)
                except (OSError, _Refused) as e:
                    failures[index] = _reason(e)

    _forget_umask()

    def prepare(indices: Sequence[int], parents: _Parents) -> dict[int, str]:
        refused: dict[int, str] = {}
        for index in indices:
            try:
                _prepare(operations[index], backup_dir, index, parents)
            except (OSError, _Refused) as e:
                refused[index] = _reason(e)
        return refused

    rest = [index for index, op in enumerate(operations) if op.action is not Action.MKDIR]
    for refused in _in_threads(prepare, rest):
        failures.update(refused)
    return failures


def _apply_all(operations: Sequence[Operation], pause: float
               ) -> dict[int, tuple[Operation, str]]:
    """Renames temp files over their targets, each a path of its own, in a few threads; then
    the rest in order: mode changes once nothing more is written in a directory, a renamed
    file's old name once the new one exists, a directory's contents before the directory.
    Returns the operations not applied for a conflict with the host, and why, by id.
    `pause`: seconds to wait after each operation (fault injection)."""
    def apply(run: Sequence[Operation], parents: _Parents) -> dict[int, tuple[Operation, str]]:
        conflicts = {}
        for op in run:
            if why := _apply(op, parents):
                conflicts[id(op)] = (op, why)
            if pause:
                time.sleep(pause)
        return conflicts

    renames = (Action.WRITE, Action.SYMLINK)
    conflicts: dict[int, tuple[Operation, str]] = {}
    for found in _in_threads(apply, [op for op in operations if op.action in renames]):
        conflicts.update(found)
    with _Parents() as parents:
        conflicts.update(apply([op for op in operations if op.action not in renames], parents))
    return conflicts


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def _in_threads(work: Callable[[Sequence[_Item], _Parents], _Result],
                items: Sequence[_Item]) -> list[_Result]:
    """`work` over runs of neighbouring items, in THREADS threads, each run with handles of
    its own; the results in order. An exception in any run is raised once all have ended."""
    def run(part: Sequence[_Item]) -> _Result:
        with _Parents() as parents:
            return work(part, parents)

    runs = [items[i:i + RUN_LENGTH] for i in range(0, len(items), RUN_LENGTH)]
    if len(runs) <= 1:
        return [run(part) for part in runs]  # not worth a thread
    with ThreadPoolExecutor(THREADS, thread_name_prefix="airlock-commit") as pool:
        return list(pool.map(run, runs))


def _make_directory(op: Operation, parents: _Parents) -> None:
    dir_fd = parents.fd(op.target, op.root, create=True)
    name = os.path.basename(op.target)
    try:
        os.mkdir(name, op.mode if op.mode is not None else 0o755, dir_fd=dir_fd)
        op.created = True
    except FileExistsError:
        op.created = False  # there already, or made meanwhile by someone else
        return
    if op.mode is not None:
        # mkdir(2) takes the umask (or the parent's default ACL) off the mode and ignores
        # the set-group-ID bit: the directory gets exactly the listed mode instead.
        _set_mode(name, dir_fd, op.mode)


def _set_mode(name: str, dir_fd: int, mode: int) -> None:
    """Gives the entry `name` (not a symlink) exactly `mode`, if it has another."""
    if stat.S_IMODE(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode) != mode:
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)


def _prepare(op: Operation, backup_dir: str, index: int, parents: _Parents) -> None:
    """Everything but applying it, for one operation other than MKDIR; touches nothing on the
    host but its temp file (and missing parent directories). What it replaces is kept as
    `backup_dir/index`."""
    name = op.target.rpartition(os.sep)[2]
    dir_fd = parents.fd(op.target, op.root, create=op.action in (Action.WRITE, Action.SYMLINK))
    if op.fresh:
        pass  # nothing to keep: whatever appears at the name meanwhile is not replaced
    elif op.action in (Action.DELETE, Action.DELETE_TREE, Action.WRITE, Action.SYMLINK):
        backup = f"{backup_dir}/{index}"
        op.backup, kept = _keep(name, dir_fd, backup)
        if kept is not None and op.action in (Action.WRITE, Action.SYMLINK):
            op.replaced = _signature(kept)
        if op.action is Action.DELETE_TREE:
            op.backup = backup
    if op.action is Action.WRITE:
        assert op.source is not None and op.temp is not None
        mode = op.mode if op.mode is not None else 0o644
        if op.move:
            op.move = _movable(op.source, mode, op.target, dir_fd, parents)
            if op.move:
                op.temp = None
                return
        source_fd = parents.open_own_file(op.source)
        _copy_fd_file(source_fd, op.temp, mode, dir_fd, op.new_hash)
    elif op.action is Action.SYMLINK:
        assert op.link is not None and op.temp is not None
        os.symlink(op.link, op.temp, dir_fd=dir_fd)


def _movable(source: str, mode: int, target: str, dir_fd: int, parents: _Parents) -> bool:
    """Whether a staged file can stand for its copy: a regular file with no other name and
    no extended attributes, the user's own, on the target's mount. Gives it the change's
    mode if so."""
    own_fd, name = parents.own_directory(source)
    st = os.stat(name, dir_fd=own_fd, follow_symlinks=False)
    if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.getuid()
            and st.st_gid == os.getgid()):
        return False
    if parents.mount_of(_split(source)[0], own_fd) != \
            parents.mount_of(_split(target)[0], dir_fd):
        return False
    # Extended attributes go with a moved inode: ACLs granting others access, a security
    # label, whatever the agent set. A copy carries none, so a file with any is copied;
    # the overlay's own bookkeeping, if any, is dropped.
    at = f"/proc/self/fd/{own_fd}/{name}"
    for attribute in os.listxattr(at, follow_symlinks=False):
        if not attribute.startswith("user.overlay."):
            return False
        os.removexattr(at, attribute, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode & 0o777:
        os.chmod(name, mode & 0o777, dir_fd=own_fd)
    return True


def _apply(op: Operation, parents: _Parents) -> str | None:
    """Idempotent: running it again after a crash finishes what was started. Returns why
    `op` was not applied (the host changed under it, or refused it), its temp file removed."""
    name = op.target.rpartition(os.sep)[2]
    try:
        dir_fd = parents.fd(op.target, op.root)
        if op.action in (Action.WRITE, Action.SYMLINK) and (op.temp or op.move):
            # From a temp file beside the target, or a moved one from where it was staged.
            if op.move:
                assert op.source is not None
                source_fd, source = parents.own_directory(op.source)
            else:
                assert op.temp is not None
                source_fd, source = dir_fd, op.temp
            if not op.fresh and op.replaced is not None:
                current = _exists(name, dir_fd)
                if current is None or _signature(current) != tuple(op.replaced):
                    return _give_up(op, source_fd, source, "conflict: changed on the host "
                                    "while being committed; the host's version was kept")
            if not _rename(source_fd, source, dir_fd, name, no_replace=op.fresh):
                return _give_up(op, source_fd, source, "conflict: created on the host while "
                                "being committed; the host's file was kept")
        elif op.action is Action.CHMOD and op.mode is not None:
            os.chmod(name, op.mode, dir_fd=dir_fd, follow_symlinks=False)
        elif op.action is Action.DELETE:
            current = _exists(name, dir_fd)
            if current is not None and not stat.S_ISDIR(current.st_mode):
                os.unlink(name, dir_fd=dir_fd)
        elif op.action is Action.DELETE_TREE and op.backup:
            current = _exists(name, dir_fd)
            if current is not None and not os.path.lexists(op.backup):
                _move_tree(f"/proc/self/fd/{dir_fd}/{name}", op.backup)
        elif (op.action is Action.RESTORE_TREE and op.source
              and _exists(name, dir_fd) is None and os.path.lexists(op.source)):
            _move_tree(op.source, f"/proc/self/fd/{dir_fd}/{name}")
    except (FileNotFoundError, _Refused) as e:
        log.warning("cannot apply %s to %s: %s", op.action, op.target, e)
    except OSError as e:
        # Say so and go on: an exception here would leave the journal "applying", to fail
        # the same way at every start. A temp file is removed (the host keeps its version).
        why = f"cannot be put in place: {_reason(e)}"
        if op.temp:
            with contextlib.suppress(OSError):
                os.unlink(op.temp, dir_fd=parents.fd(op.target, op.root))
        return why
    return None


def _give_up(op: Operation, source_fd: int, source: str, why: str) -> str | None:
    """Keeps the host's version: a temp file is removed, a staged file stays staged. None if
    `source` is gone: it was put in place before a crash, so the host's version is the
    commit's."""
    try:
        if op.move:
            os.stat(source, dir_fd=source_fd, follow_symlinks=False)
        else:
            os.unlink(source, dir_fd=source_fd)
    except FileNotFoundError:
        return None
    return why


_RENAME_NOREPLACE = 1


def _rename(source_fd: int, source: str, dir_fd: int, name: str, no_replace: bool) -> bool:
    """Renames `source` to `name`; with `no_replace`, not over an existing `name`: False
    if there was one. A missing `source` (renamed before a crash) is nothing to do."""
    if not no_replace:
        with contextlib.suppress(FileNotFoundError):
            os.rename(source, name, src_dir_fd=source_fd, dst_dir_fd=dir_fd)
        return True
    if _libc.renameat2(source_fd, os.fsencode(source), dir_fd, os.fsencode(name),
                       _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    if code == errno.ENOENT:
        return True
    if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        raise OSError(code, os.strerror(code), source)
    # A file system without renameat2 flags: link(2) also refuses an existing name.
    try:
        os.link(source, name, src_dir_fd=source_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    except FileNotFoundError:
        return True
    os.unlink(source, dir_fd=source_fd)
    return True


def _move_tree(source: str, destination: str) -> None:
    """A rename, or across file systems a copy and a removal (not atomic; said in README).
    A side inside the host tree is named through its parent's handle, /proc/self/fd/N/NAME."""
    try:
        os.rename(source, destination)
    except OSError:
        shutil.copytree(source, destination, symlinks=True)
        shutil.rmtree(source)


def _roll_back(op: Operation, parents: _Parents) -> None:
    """Undoes what preparing `op` may have done; quiet about what it had not done yet."""
    try:
        dir_fd = parents.fd(op.target, op.root)
        if op.temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.temp, dir_fd=dir_fd)
        if op.action is Action.MKDIR and op.created:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.basename(op.target), dir_fd=dir_fd)
    except FileNotFoundError:
        pass  # its directory was never made
    except (OSError, _Refused) as e:
        log.warning("rolling back %s on %s: %s", op.action, op.target, e)


def _sync_directories(directories: Iterable[str]) -> None:
    for directory in sorted(directories):
        with contextlib.suppress(OSError):
            _fsync_dir(directory)


_libc = ctypes.CDLL(None, use_errno=True)


class _EarlyWriteback:
    """While files are being prepared, writes out those ready so far (syncfs(2) over and
    over, in a thread of its own): the syncfs that must follow the last of them then has
    little left to do. Only an early start: the guarantee is that later syncfs."""

    INTERVAL = 0.05  # seconds

    def __init__(self, directories: Iterable[str]) -> None:
        self._directories = set(directories)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._write_back, name="airlock-writeback")

    def __enter__(self) -> _EarlyWriteback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _write_back(self) -> None:
        while not self._done.wait(self.INTERVAL):
            _sync_file_systems(self._directories)


def _sync_file_systems(directories: Iterable[str]) -> None:
    """syncfs(2) once for each file system the directories are on."""
    seen: set[int] = set()
    for directory in directories:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            device = os.fstat(fd).st_dev
            if device not in seen:
                seen.add(device)
                sync_file_system(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_hash(target: str) -> str | None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    return sha256_file(Path(target)) if stat.S_ISREG(st.st_mode) else "not-a-file"


def _reverse(op: Operation) -> tuple[Operation | None, str | None]:
    """The operation that undoes `op`, or why it cannot be undone now."""
    present = os.path.lexists(op.target)
    if op.action is Action.WRITE:
        if _current_hash(op.target) != op.new_hash:
            return None, "changed since the commit: not undone"
        if op.backup is None:
            return Operation(Action.DELETE, op.target, op.root, old_hash=op.new_hash), None
        return Operation(Action.WRITE, op.target, op.root, source=op.backup, mode=_mode(op.backup),
                         new_hash=op.old_hash), None
    if op.action is Action.SYMLINK:
        if not os.path.islink(op.target) or os.readlink(op.target) != op.link:
            return None, "changed since the commit: not undone"
        if op.backup is None:
            return Operation(Action.DELETE, op.target, op.root), None
        return Operation(Action.SYMLINK, op.target, op.root, link=os.readlink(op.backup)), None
    if op.action is Action.DELETE:
        if present:
            return None, "re-created since the commit: not undone"
        if op.backup is None:
            return None, None
        if os.path.islink(op.backup):
            return Operation(Action.SYMLINK, op.target, op.root, link=os.readlink(op.backup)), None
        return Operation(Action.WRITE, op.target, op.root, source=op.backup, mode=_mode(op.backup),
                         new_hash=op.old_hash), None
    if op.action is Action.DELETE_TREE:
        if present:
            return None, "re-created since the commit: not undone"
        return Operation(Action.RESTORE_TREE, op.target, op.root, source=op.backup), None
    if op.action is Action.MKDIR and op.created:
        if present and os.path.isdir(op.target) and not os.listdir(op.target):
            return Operation(Action.DELETE_TREE, op.target, op.root), None
        return None, None
    return None, None


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)
