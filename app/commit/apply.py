"""The commit's steps on the host: temp files and backups prepared, renamed into place,
rolled back or forward after a crash; and the facts an undo is planned from.

Every path is reached from its granted root one component at a time with O_NOFOLLOW
(`app.fs.DirectoryHandles`), so neither the agent nor a race on the host can redirect a write
through a symlink. What lands is what was reviewed: each copy is hashed (Airlock's own temp
file, which the agent cannot reach) and refused unless it matches the change's hash. Nor is the
host's own work overwritten: a new file is put in place only if nothing has appeared at its
name meanwhile (renameat2 RENAME_NOREPLACE), and a file is replaced only if it is still the
one kept for undo.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app import fs
from app.commit.journal import CommitAction, CommitRecord, Operation
from app.commit.operations import NOT_A_FILE, UndoFacts
from app.fs import (
    DirectoryHandles,
    Refused,
    fsync_directory,
    sha256_file,
    special_kind,
    split,
    stat_at,
)

log = logging.getLogger(__name__)

# Put in place by renaming a temp file (or a moved staged file) over the target.
_RENAMED = (CommitAction.WRITE, CommitAction.SYMLINK)

# Files are copied, and renamed into place, by a few threads: the work is system calls, which
# release the GIL, and a file system keeps more than one core busy. Each task takes a run of
# neighbouring operations, which mostly share their parent directory's handle.
THREADS = 2


RUN_LENGTH = 256


CHUNK = 1 << 20  # bytes read at a time to hash a copy


def reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename or ''})".replace(" ()", "")
    return str(error)


def _keep(name: str, dir_fd: int, backup: str) -> tuple[str | None, os.stat_result | None]:
    """Keeps what is at `name` for undo: a hard link, else a copy (else a moved tree).
    Returns the backup's path and what was kept."""
    st = stat_at(name, dir_fd)
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
            _copy_fd_file(
                os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd),
                backup,
                stat.S_IMODE(st.st_mode),
            )
    return backup, st


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _copy_fd_file(
    source_fd: int,
    destination: str,
    mode: int,
    dir_fd: int | None = None,
    expected: str | None = None,
) -> None:
    """Copies an open regular file (the kernel moves the bytes) into a new file; a copy that
    fails leaves no part behind. `expected`: the sha256 the copy must have (it is read back
    from the copy, which is Airlock's alone, so the source changing meanwhile cannot slip
    anything past the check)."""
    try:
        st = os.fstat(source_fd)
        if not stat.S_ISREG(st.st_mode):
            what = "directory" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
            raise Refused(f"a {what}, not a regular file")
        mode &= 0o777
        kept = mode & ~_umask() == mode  # made with its mode: no fchmod
        out = os.open(
            destination,
            (os.O_RDWR if expected else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            mode if kept else 0o600,
            dir_fd=dir_fd,
        )
        # A default ACL on the target's folder takes the place of the umask: the new file
        # then has fewer bits than asked for. One fstat finds out; fchmod makes it exact.
        kept = kept and stat.S_IMODE(os.fstat(out).st_mode) == mode
        try:
            try:
                _copy_bytes(source_fd, out, st.st_size)
                if expected is not None and (copied := _digest(out)) != expected:
                    raise Refused(
                        f"changed since it was reviewed (reviewed sha256 "
                        f"{expected[:16]}, now {copied[:16]}): not committed; "
                        "review it again"
                    )
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


def reserve_names(record: CommitRecord) -> None:
    """Names the temp files and marks the directories the commit will create, before anything
    is touched: the first journal then holds everything a rollback has to remove."""
    with DirectoryHandles() as parents:
        for index, op in enumerate(record.operations):
            if op.action in (CommitAction.WRITE, CommitAction.SYMLINK):
                op.temp = f".airlock-{record.id}-{index}.tmp"
            elif op.action is CommitAction.MKDIR:
                op.created = _absent(op, parents)


def _absent(op: Operation, parents: DirectoryHandles) -> bool:
    try:
        return stat_at(os.path.basename(op.target), parents.fd(op.target, op.root)) is None
    except FileNotFoundError:
        return True  # in a new directory too
    except (OSError, Refused):
        return False  # preparing it will say why not


def prepare_all(operations: Sequence[Operation], backup_dir: str) -> dict[int, str]:
    """Prepares the operations; returns why each one that cannot be was refused, by index.
    New directories are made first, in order (parents before children), so that the copies
    can then run in any order, in parallel."""
    failures: dict[int, str] = {}
    with DirectoryHandles() as parents:
        for index, op in enumerate(operations):
            if op.action is CommitAction.MKDIR:
                try:
                    _make_directory(op, parents)
                except (OSError, Refused) as e:
                    failures[index] = reason(e)

    _forget_umask()

    def prepare(indices: Sequence[int], parents: DirectoryHandles) -> dict[int, str]:
        refused: dict[int, str] = {}
        for index in indices:
            try:
                prepare_one(operations[index], backup_dir, index, parents)
            except (OSError, Refused) as e:
                refused[index] = reason(e)
        return refused

    rest = [index for index, op in enumerate(operations) if op.action is not CommitAction.MKDIR]
    for refused in _in_threads(prepare, rest):
        failures.update(refused)
    return failures


def apply_all(operations: Sequence[Operation], pause: float) -> dict[int, tuple[Operation, str]]:
    """Renames temp files over their targets, each a path of its own, in a few threads; then
    the rest in order: mode changes once nothing more is written in a directory, a renamed
    file's old name once the new one exists, a directory's contents before the directory.
    Returns the operations not applied for a conflict with the host, and why, by id.
    `pause`: seconds to wait after each operation (fault injection)."""

    def apply(
        run: Sequence[Operation], parents: DirectoryHandles
    ) -> dict[int, tuple[Operation, str]]:
        conflicts = {}
        for op in run:
            if why := apply_one(op, parents):
                conflicts[id(op)] = (op, why)
            if pause:
                time.sleep(pause)
        return conflicts

    conflicts: dict[int, tuple[Operation, str]] = {}
    for found in _in_threads(apply, [op for op in operations if op.action in _RENAMED]):
        conflicts.update(found)
    with DirectoryHandles() as parents:
        conflicts.update(apply([op for op in operations if op.action not in _RENAMED], parents))
    return conflicts


_Item = TypeVar("_Item")


_Result = TypeVar("_Result")


def _in_threads(
    work: Callable[[Sequence[_Item], DirectoryHandles], _Result], items: Sequence[_Item]
) -> list[_Result]:
    """`work` over runs of neighbouring items, in THREADS threads, each run with handles of
    its own; the results in order. An exception in any run is raised once all have ended."""

    def run(part: Sequence[_Item]) -> _Result:
        with DirectoryHandles() as parents:
            return work(part, parents)

    runs = [items[i : i + RUN_LENGTH] for i in range(0, len(items), RUN_LENGTH)]
    if len(runs) <= 1:
        return [run(part) for part in runs]  # not worth a thread
    with ThreadPoolExecutor(THREADS, thread_name_prefix="airlock-commit") as pool:
        return list(pool.map(run, runs))


def _make_directory(op: Operation, parents: DirectoryHandles) -> None:
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


def prepare_one(op: Operation, backup_dir: str, index: int, parents: DirectoryHandles) -> None:
    """Everything but applying it, for one operation other than MKDIR; touches nothing on the
    host but its temp file (and missing parent directories). What it replaces is kept as
    `backup_dir/index`."""
    name = op.target.rpartition(os.sep)[2]
    dir_fd = parents.fd(op.target, op.root, create=op.action in _RENAMED)
    if op.fresh:
        pass  # nothing to keep: whatever appears at the name meanwhile is not replaced
    elif op.action in (CommitAction.DELETE, CommitAction.DELETE_TREE, *_RENAMED):
        backup = f"{backup_dir}/{index}"
        op.backup, kept = _keep(name, dir_fd, backup)
        if kept is not None and op.action in (CommitAction.WRITE, CommitAction.SYMLINK):
            op.replaced = _signature(kept)
        if op.action is CommitAction.DELETE_TREE:
            op.backup = backup
    if op.action is CommitAction.WRITE:
        assert op.source is not None and op.temp is not None
        mode = op.mode if op.mode is not None else 0o644
        if op.move:
            op.move = _movable(op.source, mode, op.target, dir_fd, parents)
            if op.move:
                op.temp = None
                return
        source_fd = parents.open_own_file(op.source)
        _copy_fd_file(source_fd, op.temp, mode, dir_fd, op.new_hash)
    elif op.action is CommitAction.SYMLINK:
        assert op.link is not None and op.temp is not None
        os.symlink(op.link, op.temp, dir_fd=dir_fd)


def _movable(source: str, mode: int, target: str, dir_fd: int, parents: DirectoryHandles) -> bool:
    """Whether a staged file can stand for its copy: a regular file with no other name and
    no extended attributes, the user's own, on the target's mount. Gives it the change's
    mode if so."""
    own_fd, name = parents.own_directory(source)
    st = os.stat(name, dir_fd=own_fd, follow_symlinks=False)
    if not (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_uid == os.getuid()
        and st.st_gid == os.getgid()
    ):
        return False
    if parents.mount_of(split(source)[0], own_fd) != parents.mount_of(split(target)[0], dir_fd):
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


def apply_one(op: Operation, parents: DirectoryHandles) -> str | None:
    """Idempotent: running it again after a crash finishes what was started. Returns why
    `op` was not applied (the host changed under it, or refused it), its temp file removed."""
    name = op.target.rpartition(os.sep)[2]
    try:
        dir_fd = parents.fd(op.target, op.root)
        if op.action in (CommitAction.WRITE, CommitAction.SYMLINK) and (op.temp or op.move):
            # From a temp file beside the target, or a moved one from where it was staged.
            if op.move:
                assert op.source is not None
                source_fd, source = parents.own_directory(op.source)
            else:
                assert op.temp is not None
                source_fd, source = dir_fd, op.temp
            if not op.fresh and op.replaced is not None:
                current = stat_at(name, dir_fd)
                if current is None or _signature(current) != tuple(op.replaced):
                    return _give_up(
                        op,
                        source_fd,
                        source,
                        "conflict: changed on the host "
                        "while being committed; the host's version was kept",
                    )
            if not _rename(source_fd, source, dir_fd, name, no_replace=op.fresh):
                return _give_up(
                    op,
                    source_fd,
                    source,
                    "conflict: created on the host while being committed; the host's file was kept",
                )
        elif op.action is CommitAction.CHMOD and op.mode is not None:
            os.chmod(name, op.mode, dir_fd=dir_fd, follow_symlinks=False)
        elif op.action is CommitAction.DELETE:
            current = stat_at(name, dir_fd)
            if current is not None and not stat.S_ISDIR(current.st_mode):
                os.unlink(name, dir_fd=dir_fd)
        elif op.action is CommitAction.DELETE_TREE and op.backup:
            current = stat_at(name, dir_fd)
            if current is not None and not os.path.lexists(op.backup):
                _move_tree(f"/proc/self/fd/{dir_fd}/{name}", op.backup)
        elif (
            op.action is CommitAction.RESTORE_TREE
            and op.source
            and stat_at(name, dir_fd) is None
            and os.path.lexists(op.source)
        ):
            _move_tree(op.source, f"/proc/self/fd/{dir_fd}/{name}")
    except (FileNotFoundError, Refused) as e:
        log.warning("cannot apply %s to %s: %s", op.action, op.target, e)
    except OSError as e:
        # Say so and go on: an exception here would leave the journal "applying", to fail
        # the same way at every start. A temp file is removed (the host keeps its version).
        why = f"cannot be put in place: {reason(e)}"
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
    if (
        _libc.renameat2(
            source_fd, os.fsencode(source), dir_fd, os.fsencode(name), _RENAME_NOREPLACE
        )
        == 0
    ):
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


def roll_back(op: Operation, parents: DirectoryHandles) -> None:
    """Undoes what preparing `op` may have done; quiet about what it had not done yet."""
    try:
        dir_fd = parents.fd(op.target, op.root)
        if op.temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.temp, dir_fd=dir_fd)
        if op.action is CommitAction.MKDIR and op.created:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.basename(op.target), dir_fd=dir_fd)
    except FileNotFoundError:
        pass  # its directory was never made
    except (OSError, Refused) as e:
        log.warning("rolling back %s on %s: %s", op.action, op.target, e)


def sync_directories(directories: Iterable[str]) -> None:
    for directory in sorted(directories):
        with contextlib.suppress(OSError):
            fsync_directory(directory)


_libc = ctypes.CDLL(None, use_errno=True)


class EarlyWriteback:
    """While files are being prepared, writes out those ready so far (syncfs(2) over and
    over, in a thread of its own): the syncfs that must follow the last of them then has
    little left to do. Only an early start: the guarantee is that later syncfs."""

    INTERVAL = 0.05  # seconds

    def __init__(self, directories: Iterable[str]) -> None:
        self._directories = set(directories)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._write_back, name="airlock-writeback")

    def __enter__(self) -> EarlyWriteback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _write_back(self) -> None:
        while not self._done.wait(self.INTERVAL):
            fs.sync_file_systems(self._directories)


def undo_facts(op: Operation, leaving: Set[str] = frozenset()) -> UndoFacts:
    """What the host holds now at `op`'s target and in its backup: as much as undoing `op`
    is decided on (`operations.reverse`), no more (a target's hash only for a written file).
    `leaving`: the paths the same undo removes before it comes to `op`; a directory that
    holds nothing else counts as empty (the commit made it for what it is taking back)."""
    action, target, backup = op.action, op.target, op.backup
    present = os.path.lexists(target)
    if action is CommitAction.WRITE:
        return UndoFacts(
            present,
            content=_current_hash(target),
            backup_mode=None if backup is None else _mode(backup),
        )
    if action is CommitAction.SYMLINK:
        return UndoFacts(
            present, link=_link(target), backup_link=None if backup is None else _link(backup)
        )
    if action is CommitAction.DELETE and not present and backup is not None:
        link = _link(backup)
        return UndoFacts(
            present, backup_link=link, backup_mode=None if link is not None else _mode(backup)
        )
    if action is CommitAction.MKDIR and op.created:
        return UndoFacts(
            present,
            empty_directory=present
            and os.path.isdir(target)
            and not os.path.islink(target)
            and all(os.path.join(target, name) in leaving for name in os.listdir(target)),
        )
    return UndoFacts(present)


def _current_hash(target: str) -> str | None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    return sha256_file(Path(target)) if stat.S_ISREG(st.st_mode) else NOT_A_FILE


def _mode(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        return None


def _link(path: str) -> str | None:
    """The symlink's target; None if `path` is not a symlink (or is gone)."""
    try:
        return os.readlink(path)
    except OSError:
        return None
