"""Staged writes: where an agent's changes wait, what they are, and how they are committed.

An agent never writes to a host file. A read-write directory grant is an overlay whose lower
layer is the session's read-only view of the tree and whose upper layer lives here; a
read-write file grant or a file saved through the portal is a private copy here. The
changeset is read from these upper layers against the host as it is now, so it works while the
session runs and after it ended, and a committed change simply stops being a change.

Everything about a staged root is stored beside it (root.json, base.jsonl), so a later
process — `airlock changes`, `airlock commit` — needs nothing but this directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from app.fs import (
    open_beneath,
    open_directory_of,
    open_regular,
    remove_any,
    sha256_at,
    sha256_file,
    special_kind,
    sync_file_system,
)
from app.text import bad_name

log = logging.getLogger(__name__)

OPAQUE_XATTR = "user.overlay.opaque"  # overlay mounted with `userxattr`, so we can read it
MAX_CHANGES = 50_000
# A lower limit for the tests: a tree past it then takes seconds to make, not a minute. It can
# only lower the limit, never raise it past what stays reviewable.
MAX_CHANGES_VARIABLE = "AIRLOCK_MAX_CHANGES"


def change_limit(environ: Mapping[str, str]) -> int:
    """How many changes a changeset lists before it is cut short: MAX_CHANGES, or less if
    `environ` says so."""
    try:
        lowered = int(environ.get(MAX_CHANGES_VARIABLE, ""))
    except ValueError:
        return MAX_CHANGES
    return min(lowered, MAX_CHANGES) if lowered > 0 else MAX_CHANGES


class RootKind(StrEnum):
    TREE = "tree"  # a directory: overlay upper layer
    FILE = "file"  # one file: a private copy


class ChangeKind(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"
    RENAMED = "renamed"
    MODE = "mode"  # only the permission bits changed


class EntryType(StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    SPECIAL = "special"


@dataclass(frozen=True, slots=True)
class StagedRoot:
    """One read-write grant's staging: host root, and where its upper layer is."""

    id: str
    kind: RootKind
    host_root: Path  # the granted directory, or the granted (or to-be-saved) file
    upper: Path  # the upper directory (TREE) or the staged file (FILE)
    grant: str
    created_at: float
    quota: int  # the largest single file that may be committed from here

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "host_root": str(self.host_root),
            "upper": str(self.upper),
            "grant": self.grant,
            "created_at": self.created_at,
            "quota": self.quota,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StagedRoot:
        return cls(
            str(data["id"]),
            RootKind(data["kind"]),
            Path(data["host_root"]),
            Path(data["upper"]),
            str(data["grant"]),
            float(data["created_at"]),
            int(data["quota"]),
        )


@dataclass(frozen=True, slots=True)
class BaseEntry:
    """A host file as it was when granted: what a conflict is measured against."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> BaseEntry:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class Change:
    path: Path  # the host path it would change
    kind: ChangeKind
    type: EntryType
    root: str  # StagedRoot.id
    staged: Path | None = None  # where the new content is (None for deletions)
    old_hash: str | None = None
    new_hash: str | None = None
    old_size: int | None = None
    new_size: int | None = None
    old_mode: int | None = None
    new_mode: int | None = None
    renamed_from: Path | None = None
    link_target: str | None = None
    problems: tuple[str, ...] = ()  # why a commit would refuse it

    @property
    def mode(self) -> int | None:
        """The permission bits a commit gives the path, exactly: what every listing shows."""
        return None if self.kind is ChangeKind.DELETED else landing_mode(self.type, self.new_mode)

    @property
    def mode_change(self) -> tuple[int | None, int] | None:
        """(before, after) when the path lands with other permission bits than it has on the
        host now (before is None for a new path), else None."""
        after = self.mode
        if after is None:
            return None
        if self.kind is ChangeKind.ADDED or self.old_mode is None:
            return None, after
        before = stat.S_IMODE(self.old_mode)
        return None if before == after else (before, after)

    @property
    def fingerprint(self) -> str:
        """What the user sees of the change: a review is of this, and a commit of what was
        reviewed refuses the change if it is no longer the same."""
        return json.dumps(
            [
                str(self.kind),
                str(self.type),
                self.new_hash,
                _octal(self.new_mode),
                self.link_target,
                str(self.renamed_from or ""),
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": str(self.kind),
            "type": str(self.type),
            "old_sha256": self.old_hash,
            "new_sha256": self.new_hash,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_mode": _octal(self.old_mode),
            "new_mode": _octal(self.new_mode),
            "mode": _octal(self.mode),
            "renamed_from": str(self.renamed_from) if self.renamed_from else None,
            "link_target": self.link_target,
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Changeset:
    session: str
    changes: tuple[Change, ...]
    truncated: bool = False  # more than `limit` changes: the rest was not even listed
    limit: int = MAX_CHANGES

    @property
    def digest(self) -> str:
        """The changeset id: a short digest of every change's path and fingerprint (kind,
        type, content hash, mode, link target, rename). Shown with every listing and
        question, so the person can compare what the terminal says with the desktop app,
        and given back to `airlock commit --reviewed` to commit exactly what was listed."""
        return changeset_digest((c.path, c.fingerprint) for c in self.changes)

    def select(self, paths: Sequence[Path] | None, exact: bool = False) -> list[Change]:
        """The changes at `paths` and below them (all if none); `exact`: at them only (a
        folder's own change, not what is in it)."""
        if not paths:
            return list(self.changes)
        wanted = [Path(os.path.abspath(p)) for p in paths]
        return [
            c
            for c in self.changes
            if any(
                c.path == w
                or (not exact and w in c.path.parents)
                or (c.renamed_from is not None and c.renamed_from == w)
                for w in wanted
            )
        ]


DIGEST_CHARS = 12  # of hex: enough to tell two listings apart at a glance


def changeset_digest(items: Iterable[tuple[Path, str]]) -> str:
    """A digest of (path, fingerprint) pairs, independent of their order."""
    digest = hashlib.sha256()
    for path, fingerprint in sorted((str(p), f) for p, f in items):
        digest.update(json.dumps([path, fingerprint]).encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()[:DIGEST_CHARS]


def landing_mode(kind: EntryType, mode: int | None) -> int | None:
    """The permission bits a commit sets for a staged entry of this mode: a file's
    read/write/execute bits (set-ID bits are refused, a sticky bit on a file means nothing),
    a directory's with its sticky and set-group-ID bits; a symlink has none of its own."""
    if mode is None or kind is EntryType.SYMLINK or kind is EntryType.SPECIAL:
        return None
    return stat.S_IMODE(mode) & (0o3777 if kind is EntryType.DIRECTORY else 0o777)


def _octal(mode: int | None) -> str | None:
    return None if mode is None else f"{stat.S_IMODE(mode):04o}"


@dataclass(frozen=True, slots=True)
class Returned:
    """A committed change that an undo took back off the host, to be staged again as it was
    committed: so that it comes back to the review instead of being lost."""

    path: Path  # the host path
    type: EntryType | None  # None: the commit deleted it (staged again as a deletion)
    content: Path | None = None  # FILE: what was committed (kept by the undo)
    link: str | None = None  # SYMLINK: its target
    mode: int | None = None  # FILE, DIRECTORY: the mode it was committed with


class SessionStaging:
    """The staging area of one session: `SESSION_DIR/staging`."""

    def __init__(self, root: Path, session: str) -> None:
        self.root = root
        self.session = session

    # creating staged roots (while the session starts or runs)

    def add_tree(
        self, host_root: Path, grant: str, quota: int, owner: tuple[int, int] | None
    ) -> tuple[StagedRoot, Path, Path]:
        """A read-write directory: returns the root, and the upper and work dirs of the
        overlay. The grant-time state of every host file is recorded for conflict checks."""
        root_id = secrets.token_hex(4)
        base = self.root / root_id
        upper, work = base / "upper", base / "work"
        for directory in (upper, work):
            directory.mkdir(parents=True, mode=0o700)
        st = os.stat(host_root)
        # The merged root takes its attributes from the upper root.
        os.chmod(upper, stat.S_IMODE(st.st_mode) | 0o700)
        if owner is not None and os.getuid() == 0:
            os.chown(upper, *owner)
        staged = StagedRoot(root_id, RootKind.TREE, host_root, upper, grant, time.time(), quota)
        self._write_base(base, _base_entries(host_root))
        self._save(base, staged)
        return staged, upper, work

    def add_file(
        self,
        host_target: Path,
        grant: str,
        quota: int,
        name_dir: Path,
        copy_from_host: bool,
        owner: tuple[int, int] | None,
    ) -> StagedRoot:
        """A read-write file or a file to save: a private copy (or an empty file) in
        `name_dir`, which the agent sees. Only this file is a candidate for commit."""
        root_id = secrets.token_hex(4)
        base = self.root / root_id
        base.mkdir(parents=True, mode=0o700)
        # A new directory of its own: in the saves area the agent may have put anything at
        # a name it guessed, so nothing already there is used.
        name_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        name_dir.mkdir(mode=0o755)
        staged_file = name_dir / host_target.name
        entries: dict[str, BaseEntry] = {}
        dir_fd, name = open_directory_of(staged_file)
        try:
            if copy_from_host:
                st = os.stat(host_target)
                entries[""] = BaseEntry.of(st)
                mode = stat.S_IMODE(st.st_mode) & 0o777 | 0o600
            elif host_target.exists():
                entries[""] = BaseEntry.of(os.stat(host_target))
            # O_EXCL: a symlink the agent planted here meanwhile is not written through.
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode if copy_from_host else 0o644,
                dir_fd=dir_fd,
            )
            with open(fd, "wb") as staged_copy:
                if copy_from_host:
                    with open(host_target, "rb") as original:
                        shutil.copyfileobj(original, staged_copy, 1024 * 1024)
                    os.fchmod(staged_copy.fileno(), mode)
                if owner is not None and os.getuid() == 0:
                    os.fchown(staged_copy.fileno(), *owner)
                    os.fchown(dir_fd, *owner)
        finally:
            os.close(dir_fd)
        staged = StagedRoot(
            root_id, RootKind.FILE, host_target, staged_file, grant, time.time(), quota
        )
        self._write_base(base, entries)
        self._save(base, staged)
        return staged

    def withdraw(self, grant: str) -> list[StagedRoot]:
        """Takes the staged copies of a revoked grant (FILE roots) out of the agent's reach:
        each moves beside its root's record, where `changes` and `commit` still find it
        (nothing staged is lost), and the agent, even from inside the directory it was in,
        no longer does. A descriptor it has open keeps working, as with any revocation."""
        withdrawn = []
        for staged in self.roots():
            if staged.grant != grant or staged.kind is not RootKind.FILE:
                continue
            kept = self.root / staged.id / "withdrawn" / staged.upper.name
            if staged.upper == kept:
                continue
            kept.parent.mkdir(mode=0o700, exist_ok=True)
            # Gone, or its directory replaced by something else: as the agent left it.
            with contextlib.suppress(OSError):
                dir_fd, name = open_directory_of(staged.upper)
                try:
                    os.rename(name, kept, src_dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
            moved = replace(staged, upper=kept)
            self._save(self.root / staged.id, moved)
            withdrawn.append(moved)
        return withdrawn

    def _save(self, base: Path, staged: StagedRoot) -> None:
        _write_json(base / "root.json", staged.to_json())

    def _write_base(self, base: Path, entries: dict[str, BaseEntry]) -> None:
        with open(base / "base.jsonl", "w") as f:
            for relative, entry in entries.items():
                f.write(json.dumps([relative, entry.ino, entry.size, entry.mtime_ns]) + "\n")

    def roots(self) -> list[StagedRoot]:
        found: list[StagedRoot] = []
        if not self.root.is_dir():
            return found
        for meta in sorted(self.root.glob("*/root.json")):
            try:
                found.append(StagedRoot.from_json(json.loads(meta.read_text())))
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable staging record %s: %s", meta, e)
        return found

    def base(self, staged: StagedRoot) -> dict[str, BaseEntry]:
        entries: dict[str, BaseEntry] = {}
        path = self.root / staged.id / "base.jsonl"
        if path.exists():
            with open(path) as f:
                for line in f:
                    relative, ino, size, mtime_ns = json.loads(line)
                    entries[relative] = BaseEntry(ino, size, mtime_ns)
        return entries

    def rebase(self, staged: StagedRoot, paths: Sequence[Path]) -> None:
        """After a commit (or undo), the host's new state is the base of later changes."""
        entries = self.base(staged)
        for path in paths:
            relative = "" if path == staged.host_root else str(path.relative_to(staged.host_root))
            try:
                entries[relative] = BaseEntry.of(os.lstat(path))
            except FileNotFoundError:
                entries.pop(relative, None)
        self._write_base(self.root / staged.id, entries)

    # reading the changes

    def changeset(self) -> Changeset:
        changes: list[Change] = []
        truncated = False
        limit = change_limit(os.environ)
        for staged in self.roots():
            try:
                found = _root_changes(staged, self.base(staged), limit - len(changes))
            except _TooMany:
                truncated = True
                break
            changes.extend(found)
        return Changeset(self.session, tuple(_pair_renames(changes)), truncated, limit)

    # an undo's changes, back for review

    def restage(self, returned: Sequence[Returned]) -> list[tuple[Path, str]]:
        """Stages each returned change again where the session's own version would be: in
        the upper layer of its tree, or as its staged file. Only for a sealed staging area
        (nothing else writes it). A path that has something staged already keeps it (the
        session's version). Returns what could not be staged again, and why."""
        roots = self.roots()
        failed: list[tuple[Path, str]] = []
        for entry in returned:
            staged = next(
                (r for r in roots if r.kind is RootKind.FILE and r.host_root == entry.path),
                None,
            ) or next(
                (r for r in roots if r.kind is RootKind.TREE and r.host_root in entry.path.parents),
                None,
            )
            if staged is None:
                failed.append((entry.path, "no staged folder or file of the session holds it"))
                continue
            try:
                _restage(staged, entry)
            except (OSError, ValueError) as e:
                failed.append((entry.path, f"cannot be staged again: {e}"))
        return failed

    # discarding

    def discard(self, changes: Sequence[Change]) -> None:
        """Drops staged changes: the agent's version of each path is forgotten."""
        roots = {r.id: r for r in self.roots()}
        for change in changes:
            staged = roots.get(change.root)
            if staged is None:
                continue
            if staged.kind is RootKind.FILE:
                self._drop_file_root(staged)
                continue
            for path in (change.path, change.renamed_from):
                if path is None:
                    continue
                *parents, name = (staged.upper.name, *path.relative_to(staged.host_root).parts)
                try:
                    # Not through a symlink the agent put in place of a directory since the
                    # listing, and not by a path too long for the kernel.
                    dir_fd = open_beneath(staged.upper.parent, parents)
                except OSError:
                    continue  # not there any more: nothing of ours to drop
                try:
                    remove_any(name, dir_fd)
                finally:
                    os.close(dir_fd)

    def _drop_file_root(self, staged: StagedRoot) -> None:
        try:
            dir_fd, name = open_directory_of(staged.upper)
        except OSError:  # gone, or not a directory of its own any more: nothing of ours
            pass
        else:
            try:
                remove_any(name, dir_fd)
            finally:
                os.close(dir_fd)
        shutil.rmtree(self.root / staged.id, ignore_errors=True)

    # the session's end

    SEALED = "sealed"

    def seal(self) -> None:
        """Marks that nothing can write the staged files any more (the session's container
        is gone): a commit may then move them into place instead of copying them. Makes
        the staging area durable first: its records, and what the agent staged."""
        if not self.root.is_dir():
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sync_file_system(fd)
        finally:
            os.close(fd)
        (self.root / self.SEALED).touch()

    @property
    def sealed(self) -> bool:
        return (self.root / self.SEALED).is_file()

    def remove_all(self) -> None:
        """Removes the staging area and everything in it: what the agent left in the saves
        area outside any save, too. Only for a sealed one: nothing is writing it. What the
        kernel made in an overlay's work directory (root's, mode 0) stays."""
        shutil.rmtree(self.root, ignore_errors=True)


def _restage(staged: StagedRoot, entry: Returned) -> None:
    if staged.kind is RootKind.FILE:
        if entry.type is not EntryType.FILE:
            raise ValueError("only a file is staged here")
        # Gone with the rest of the area once everything was committed: made again, not
        # through a symlink left in its place.
        staged.upper.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            staged.upper.parent.mkdir(mode=0o755)
        dir_fd, name = open_directory_of(staged.upper)
    else:
        *parents, name = entry.path.relative_to(staged.host_root).parts
        dir_fd = _upper_directory(staged, parents)
    try:
        if _lstat_at(name, dir_fd) is not None:
            return  # the session's own version is staged there
        if entry.type is None:
            os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=dir_fd)  # an overlay's whiteout
        elif entry.type is EntryType.SYMLINK:
            os.symlink(entry.link or "", name, dir_fd=dir_fd)
        elif entry.type is EntryType.DIRECTORY:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            os.chmod(name, entry.mode if entry.mode is not None else 0o755, dir_fd=dir_fd)
        elif entry.content is not None:
            source = open_regular(entry.content)
            try:
                # A copy, not a link: a staged file with two names is refused at commit.
                target = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
                )
                with open(target, "wb") as out, open(source, "rb", closefd=False) as original:
                    shutil.copyfileobj(original, out, 1024 * 1024)
                    os.fchmod(out.fileno(), entry.mode if entry.mode is not None else 0o644)
            finally:
                os.close(source)
        else:
            raise ValueError("what was committed was not kept")
    finally:
        os.close(dir_fd)


def _upper_directory(staged: StagedRoot, parts: Sequence[str]) -> int:
    """A descriptor of `parts` below the tree's upper layer, made where missing (with the
    host folder's mode, so that it is no change of its own); never through a symlink."""
    staged.upper.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(staged.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    host = staged.host_root
    try:
        for part in parts:
            host = host / part
            if _lstat_at(part, fd) is None:
                host_st = _lstat(host)
                mode = stat.S_IMODE(host_st.st_mode) if host_st is not None else 0o755
                os.mkdir(part, 0o700, dir_fd=fd)
                os.chmod(part, mode, dir_fd=fd, follow_symlinks=False)
            child = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _TooMany(Exception):
    pass


def _write_json(path: Path, value: Any) -> None:
    """Replaces `path` whole. Not synced here: a grant waits for this, and an fsync can wait
    behind every other write the disk has queued (half a second after a 1 GiB download);
    `SessionStaging.seal` makes the records durable with the agent's staged files."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w") as f:
        json.dump(value, f)
    os.replace(temp, path)


def _base_entries(host_root: Path) -> dict[str, BaseEntry]:
    entries: dict[str, BaseEntry] = {}
    for dirpath, dirnames, filenames in os.walk(host_root):
        directory = Path(dirpath)
        for name in filenames + dirnames:
            path = directory / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            entries[str(path.relative_to(host_root))] = BaseEntry.of(st)
    return entries


def _entry_type(mode: int) -> EntryType:
    if stat.S_ISREG(mode):
        return EntryType.FILE
    if stat.S_ISDIR(mode):
        return EntryType.DIRECTORY
    if stat.S_ISLNK(mode):
        return EntryType.SYMLINK
    return EntryType.SPECIAL


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(directory: int) -> bool:
    """Whether the staged directory open as `directory` hides the host's entries below it."""
    try:
        return os.getxattr(directory, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # deeper than a path can name: not on the host
            return None
        raise


def _root_changes(staged: StagedRoot, base: dict[str, BaseEntry], budget: int) -> list[Change]:
    changes: list[Change] = []

    def add(change: Change) -> None:
        if len(changes) >= budget:
            raise _TooMany
        changes.append(change)

    if staged.kind is RootKind.FILE:
        try:
            dir_fd, name = open_directory_of(staged.upper)
        except FileNotFoundError:
            return changes  # nothing staged (any more): committed, or never saved
        except OSError as e:
            # Gone with its directory (the agent may delete what it saved), or that directory
            # replaced by a symlink: there is no staged file of ours to compare.
            log.warning("%s: no staged file: %s", staged.upper, e.strerror)
            return changes
        try:
            upper_st = os.lstat(name, dir_fd=dir_fd)
            change = _compare_or_refuse(
                staged, _At(dir_fd, name, staged.upper), staged.host_root, base.get(""), upper_st
            )
        except FileNotFoundError:
            return changes
        finally:
            os.close(dir_fd)
        if change is not None:
            add(change)
        return changes

    def walk(dir_fd: int, upper_dir: Path, host_dir: Path, replaced: bool) -> None:
        """Lists the staged directory open as `dir_fd`. Every name in it is looked at and
        opened relative to that descriptor, without following symlinks: the agent can swap
        a directory for a symlink to one of the user's while this runs, and nothing of
        theirs must then be listed (or hashed) as staged. No path length limits it either."""
        try:
            entries = sorted(entry.name for entry in os.scandir(dir_fd))
        except OSError as e:
            # What it holds can be neither reviewed nor committed; say so on its change.
            why = f"cannot be read ({e.strerror}): what it holds is not listed"
            if changes and changes[-1].path == host_dir:
                changes[-1] = _with_problem(changes[-1], why)
            else:
                add(
                    Change(
                        host_dir,
                        ChangeKind.MODIFIED,
                        EntryType.DIRECTORY,
                        staged.id,
                        upper_dir,
                        problems=(why,),
                    )
                )
            return
        if replaced:
            # An opaque directory hides everything the host had there.
            names = set(entries)
            host_st = _lstat(host_dir)
            if host_st is not None and stat.S_ISDIR(host_st.st_mode):
                for name in sorted(os.listdir(host_dir)):
                    if name not in names:
                        _deleted(host_dir / name)
        for name in entries:
            upper, host = upper_dir / name, host_dir / name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # renamed or removed by the agent while this was listed
            except OSError as e:
                add(
                    Change(
                        host,
                        ChangeKind.MODIFIED,
                        EntryType.FILE,
                        staged.id,
                        upper,
                        problems=(f"cannot be read ({e.strerror}): not committed",),
                    )
                )
                continue
            problem = bad_name(name)
            if _is_whiteout(st):
                if _lstat(host) is not None:
                    _deleted(host)
                continue
            host_st = _lstat(host)
            if stat.S_ISDIR(st.st_mode):
                try:
                    child = os.open(
                        name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dir_fd,
                    )
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone, or swapped for something else, since it was looked at
                except OSError as e:
                    child = -1
                    unreadable = f"cannot be read ({e.strerror}): what it holds is not listed"
                try:
                    if host_st is None or not stat.S_ISDIR(host_st.st_mode):
                        if host_st is not None:
                            _deleted(host)
                        add(
                            Change(
                                host,
                                ChangeKind.ADDED,
                                EntryType.DIRECTORY,
                                staged.id,
                                upper,
                                new_mode=st.st_mode,
                                problems=(problem,) if problem else (),
                            )
                        )
                        opaque = False
                    else:
                        if landing_mode(EntryType.DIRECTORY, st.st_mode) != landing_mode(
                            EntryType.DIRECTORY, host_st.st_mode
                        ):
                            add(
                                Change(
                                    host,
                                    ChangeKind.MODE,
                                    EntryType.DIRECTORY,
                                    staged.id,
                                    upper,
                                    old_mode=host_st.st_mode,
                                    new_mode=st.st_mode,
                                )
                            )
                        opaque = child >= 0 and _is_opaque(child)
                    if child < 0:
                        if changes and changes[-1].path == host:
                            changes[-1] = _with_problem(changes[-1], unreadable)
                        else:
                            add(
                                Change(
                                    host,
                                    ChangeKind.MODIFIED,
                                    EntryType.DIRECTORY,
                                    staged.id,
                                    upper,
                                    problems=(unreadable,),
                                )
                            )
                        continue
                    walk(child, upper, host, replaced=opaque)
                finally:
                    if child >= 0:
                        os.close(child)
                continue
            relative = str(host.relative_to(staged.host_root))
            change = _compare_or_refuse(
                staged, _At(dir_fd, name, upper), host, base.get(relative), st
            )
            if change is not None:
                if problem:
                    change = _with_problem(change, problem)
                add(change)

    def _deleted(host: Path) -> None:
        st = os.lstat(host)
        relative = str(host.relative_to(staged.host_root))
        problems = _conflict(host, base.get(relative), st)
        digest = sha256_file(host) if stat.S_ISREG(st.st_mode) else None
        add(
            Change(
                host,
                ChangeKind.DELETED,
                _entry_type(st.st_mode),
                staged.id,
                None,
                old_hash=digest,
                old_size=st.st_size,
                old_mode=st.st_mode,
                problems=problems,
            )
        )

    try:
        top = os.open(staged.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return changes
    try:
        walk(top, staged.upper, staged.host_root, replaced=_is_opaque(top))
    finally:
        os.close(top)
    return changes


def _conflict(
    host: Path, base: BaseEntry | None, st: os.stat_result | None, staged_hash: str | None = None
) -> tuple[str, ...]:
    if st is None:
        return ("conflict: deleted on the host since it was granted",) if base else ()
    if base is not None and BaseEntry.of(st) == base:
        return ()
    what = (
        "created on the host since the grant"
        if base is None
        else "changed on the host since it was granted"
    )
    if stat.S_ISREG(st.st_mode):
        what += f" (host sha256 {sha256_file(host)[:16]}"
        what += f", staged sha256 {staged_hash[:16]})" if staged_hash else ")"
    return (f"conflict: {what}",)


def _with_problem(change: Change, problem: str) -> Change:
    return replace(change, problems=(*change.problems, problem))


class _At(NamedTuple):
    """A staged entry: its name in the directory open as `dir_fd` (where it is read), and
    its path (what a change names as staged)."""

    dir_fd: int
    name: str
    path: Path


def _compare_or_refuse(
    staged: StagedRoot, upper: _At, host: Path, base: BaseEntry | None, st: os.stat_result
) -> Change | None:
    """`_compare`, or, if the agent's version cannot be read (made unreadable, swapped for
    a FIFO, removed while it was read), a change that says so and is not committed."""
    try:
        return _compare(staged, upper, host, base, st)
    except FileNotFoundError:
        return None
    except OSError as e:
        kind = ChangeKind.ADDED if _lstat(host) is None else ChangeKind.MODIFIED
        return Change(
            host,
            kind,
            _entry_type(st.st_mode),
            staged.id,
            upper.path,
            new_size=st.st_size,
            new_mode=st.st_mode,
            problems=(f"cannot be read ({e.strerror}): not committed",),
        )


def _compare(
    staged: StagedRoot, at: _At, host: Path, base: BaseEntry | None, st: os.stat_result
) -> Change | None:
    """The change the agent's version (`at`) makes to `host`, or None if there is none."""
    upper = at.path
    host_st = _lstat(host)
    kind_of = _entry_type(st.st_mode)
    problems: list[str] = []
    new_hash = link_target = None
    if kind_of is EntryType.FILE:
        if st.st_size > staged.quota:
            # Not hashed: a sparse file of terabytes would take hours.
            problems.append(f"larger than the staging quota ({st.st_size} > {staged.quota} bytes)")
        else:
            new_hash = sha256_at(at.dir_fd, at.name)
        if st.st_nlink > 1:
            problems.append(f"a hard link ({st.st_nlink} names): hard links are not committed")
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            problems.append("set-user-ID or set-group-ID bit: not committed")
    elif kind_of is EntryType.SYMLINK:
        link_target = os.readlink(at.name, dir_fd=at.dir_fd)
        if not _link_stays_inside(staged, host, link_target):
            problems.append(f"a symlink to {link_target!r}, outside {staged.host_root}")
    elif kind_of is EntryType.DIRECTORY:  # where a file was saved or granted
        problems.append("a directory where a file was staged: not committed")
    else:
        problems.append(
            f"a {special_kind(st.st_mode)} file: only files, directories and symlinks are committed"
        )
    if host_st is None:
        problems.extend(_conflict(host, base, None) if base else ())
        return Change(
            host,
            ChangeKind.ADDED,
            kind_of,
            staged.id,
            upper,
            new_hash=new_hash,
            new_size=st.st_size,
            new_mode=st.st_mode,
            link_target=link_target,
            problems=tuple(problems),
        )
    host_type = _entry_type(host_st.st_mode)
    old_hash = sha256_file(host) if host_type is EntryType.FILE else None
    same_content = host_type == kind_of and (
        (kind_of is EntryType.FILE and old_hash == new_hash)
        or (kind_of is EntryType.SYMLINK and os.readlink(host) == link_target)
    )
    # Compared as a commit would set them: a bit it does not carry is no change.
    same_mode = landing_mode(kind_of, host_st.st_mode) == landing_mode(kind_of, st.st_mode)
    if same_content and (same_mode or kind_of is EntryType.SYMLINK):
        return None
    problems.extend(_conflict(host, base, host_st, new_hash))
    kind = ChangeKind.MODE if same_content else ChangeKind.MODIFIED
    return Change(
        host,
        kind,
        kind_of,
        staged.id,
        upper,
        old_hash=old_hash,
        new_hash=new_hash,
        old_size=host_st.st_size,
        new_size=st.st_size,
        old_mode=host_st.st_mode,
        new_mode=st.st_mode,
        link_target=link_target,
        problems=tuple(problems),
    )


MAX_LINK_HOPS = 40  # the kernel's own limit (ELOOP)


def _link_stays_inside(staged: StagedRoot, host: Path, target: str) -> bool:
    """Whether a symlink at `host` with this target resolves inside the granted root, as the
    kernel would resolve it: through the other symlinks on its way, staged or the host's
    (`a/up -> ../..` makes `a/k -> up/../../.ssh` leave the root, which the text alone does
    not show). Checked against the tree after the commit (staged over host) and against the
    host as it is, for a commit of some changes only."""
    return all(
        _resolves_inside(staged, host, target, layers)
        for layers in ((staged.upper, staged.host_root), (staged.host_root,))
    )


def _resolves_inside(staged: StagedRoot, host: Path, target: str, layers: tuple[Path, ...]) -> bool:
    root = staged.host_root
    if target.startswith("/"):
        if not (target == str(root) or target.startswith(f"{root}/")):
            return False
        current: list[str] = []
        pending = list(Path(target).relative_to(root).parts)
    else:
        current = list(host.parent.relative_to(root).parts)
        pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return False  # above the root
            current.pop()
            continue
        candidate = [*current, part]
        link = _link_in(layers, candidate)
        if link is None:
            current = candidate
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return False
        if link.startswith("/"):
            if not (link == str(root) or link.startswith(f"{root}/")):
                return False
            current, pending = [], [*Path(link).relative_to(root).parts, *pending]
        else:
            pending = [*link.split("/"), *pending]
    return True


def _link_in(layers: tuple[Path, ...], parts: list[str]) -> str | None:
    """The target of the symlink at `parts` in the topmost layer that has the path, if it is
    a symlink there; None for anything else (a file, a directory, nothing, a whiteout)."""
    path = Path()
    for layer in layers:
        try:
            for depth in range(1, len(parts) + 1):
                path = layer.joinpath(*parts[:depth])
                st = os.lstat(path)
                if depth < len(parts) and not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError  # not in this layer (nor followed out of it)
        except OSError:
            continue
        if _is_whiteout(st):
            return None
        return os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return None


def _pair_renames(changes: list[Change]) -> Iterator[Change]:
    """An overlay records a rename as a deletion plus an addition; pair them back up when the
    content identifies the file unambiguously."""
    deleted: dict[str, list[Change]] = {}
    added: dict[str, list[Change]] = {}
    for change in changes:
        if change.type is EntryType.FILE and change.kind is ChangeKind.DELETED and change.old_hash:
            deleted.setdefault(change.old_hash, []).append(change)
        if change.type is EntryType.FILE and change.kind is ChangeKind.ADDED and change.new_hash:
            added.setdefault(change.new_hash, []).append(change)
    pairs: dict[Path, Change] = {}
    consumed: set[Path] = set()
    for digest, removed in deleted.items():
        arrived = added.get(digest, [])
        if len(removed) == 1 and len(arrived) == 1 and removed[0].root == arrived[0].root:
            old, new = removed[0], arrived[0]
            pairs[new.path] = Change(
                new.path,
                ChangeKind.RENAMED,
                EntryType.FILE,
                new.root,
                new.staged,
                old_hash=old.old_hash,
                new_hash=new.new_hash,
                old_size=old.old_size,
                new_size=new.new_size,
                old_mode=old.old_mode,
                new_mode=new.new_mode,
                renamed_from=old.path,
                problems=(*old.problems, *new.problems),
            )
            consumed.add(old.path)
    for change in changes:
        if change.path in consumed and change.kind is ChangeKind.DELETED:
            continue
        yield pairs.get(change.path, change) if change.kind is ChangeKind.ADDED else change
