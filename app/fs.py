"""Safe file-system steps: descriptor-relative, never through a symlink, never stuck on a FIFO.

Below a staged root the agent decides what each name is, and on the host a race can swap a
directory for a symlink at any moment. Every helper here reaches a path one component at a
time from a directory Airlock opened itself (O_NOFOLLOW at each step), or names the entry
relative to such a directory's descriptor; a file to be read is opened non-blocking and
refused unless it is a regular file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CHILD_DIRECTORY = _DIRECTORY | os.O_NOFOLLOW


class Refused(Exception):
    """A path or file the safe helpers will not go through (outside its root, a symlink in
    its way, not a regular file); the message says which and why."""


def open_beneath(root: Path, parts: Sequence[str]) -> int:
    """A descriptor of the directory `root/parts…`, each part opened with O_NOFOLLOW from
    the one before: below a staged root the agent decides what each name is."""
    fd = os.open(root, _DIRECTORY)
    try:
        for part in parts:
            next_fd = os.open(part, _CHILD_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_directory_of(path: Path | str) -> tuple[int, str]:
    """A descriptor of the directory `path` is in, and its name there.

    That directory is opened without following a symlink in its place. In the saves area it
    is the agent's own (`saves/TOKEN`): the agent can replace it by a symlink to any of the
    user's directories, and what Airlock then read, moved or deleted "in the save" would be
    the user's files. The directory above it (the agent's mount point, or one of Airlock's
    own) the agent cannot replace."""
    directory, name = os.path.split(os.fspath(path))
    above, last = os.path.split(directory)
    return open_beneath(Path(above or "/"), [last]), name


def open_regular_at(name: str, dir_fd: int | None = None) -> int:
    """Opens `name` for reading if it is a regular file: not through a symlink in its
    place, and a FIFO or device swapped in after it was looked at is refused at once
    instead of blocking the reader for good."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file any more", name)
    return fd


def open_regular(path: Path | str) -> int:
    """Opens a file for reading only if it is a regular file: no symlink is followed in its
    place or its directory's (`open_directory_of`), and a FIFO or device swapped in after
    it was looked at is refused instead of blocking the reader for good."""
    dir_fd, name = open_directory_of(path)
    try:
        return open_regular_at(name, dir_fd)
    finally:
        os.close(dir_fd)


def sha256_file(path: Path) -> str:
    """The hash of a host file: reached by its path (the agent writes no host directory),
    but not through a symlink in its place and never stuck on a FIFO."""
    return sha256_fd(open_regular_at(os.fspath(path)))


def sha256_at(dir_fd: int, name: str) -> str:
    """The hash of the regular file `name` in the directory open as `dir_fd`."""
    return sha256_fd(open_regular_at(name, dir_fd))


def sha256_fd(fd: int) -> str:
    """The hash of an open file, read from where it is to its end; closes `fd`."""
    digest = hashlib.sha256()
    with open(fd, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def stat_at(name: str, dir_fd: int) -> os.stat_result | None:
    """The entry `name` itself (a symlink is not followed), or None if there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def identity_at(dir_fd: int, name: str) -> tuple[int, int] | None:
    """(device, inode) of the entry `name` itself, or None if it cannot be looked at."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def is_symlink_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def special_kind(mode: int) -> str:
    """What a file that is neither regular, a directory nor a symlink is, for messages."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special"


def copy_at(dir_fd: int, name: str, target: Path, mode: int) -> None:
    """Copies the entry `name` (not through a symlink) into the new file `target`, which
    gets `mode`."""
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        destination = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with (
                open(source, "rb", closefd=False) as src,
                open(destination, "wb", closefd=False) as dst,
            ):
                shutil.copyfileobj(src, dst, 1024 * 1024)
            os.fchmod(destination, mode)
        finally:
            os.close(destination)
    finally:
        os.close(source)


def remove_any(path: str, dir_fd: int | None = None) -> None:
    """Removes the entry (a whole tree for a directory, never followed), if there is one."""
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True, dir_fd=dir_fd)
    else:
        try:
            os.unlink(path, dir_fd=dir_fd)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def sync_file_system(fd: int) -> None:
    """syncfs(2) of the file system an open file or directory is on; without syncfs, an
    fsync of that file at least."""
    if _libc.syncfs(fd) != 0:
        os.fsync(fd)


def sync_file_systems(directories: Iterable[str]) -> None:
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


def fsync_directory(path: Path | str) -> None:
    """Makes a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split(path: str) -> tuple[str, str]:
    """os.path.split for absolute, normalized paths, at a fraction of its cost: it runs a
    few times for each of 10 000 committed files."""
    parent, _, name = path.rpartition(os.sep)
    return parent or os.sep, name


class DirectoryHandles:
    """Handles on the parent directories of paths below a root, each reached from the root
    one component at a time with O_NOFOLLOW, kept open (a bounded number) for the next path
    in the same directory. A handle is valid until the next call. Not thread-safe: one per
    thread."""

    LIMIT = 256

    def __init__(self) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._own: OrderedDict[str, int] = OrderedDict()  # Airlock's directories
        self._mounts: dict[str, int] = {}
        self._prefixes: dict[str, str] = {}  # root -> root + "/"

    def __enter__(self) -> DirectoryHandles:
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
        directory, name = split(path)
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
            # O_NONBLOCK: a FIFO swapped in for a staged file must not hang the reader
            # (it is then refused as not a regular file).
            return os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError as e:
            e.filename = path  # what a refusal names, as if the full path had been opened
            raise

    def fd(self, target: str, root: str, create: bool = False) -> int:
        """The handle of `target`'s parent directory, below `root`; `create` makes missing
        directories on the way (0755)."""
        # Plain string operations: this runs once per committed file.
        if target == root:
            key = os.path.dirname(root)
            if key not in self._fds:
                self._cache(key, os.open(key, _DIRECTORY))
            return self._fds[key]
        prefix = self._prefixes.get(root)
        if prefix is None:
            prefix = self._prefixes[root] = root + os.sep
        if not target.startswith(prefix):
            raise Refused(f"{target} is outside the granted {root}")
        parent = target.rpartition(os.sep)[0]
        cached = self._fds.get(parent)
        if cached is not None:
            self._fds.move_to_end(parent)
            return cached
        if root not in self._fds:
            self._cache(root, os.open(root, _DIRECTORY))
        fd, current = self._fds[root], root
        for part in parent[len(root) + 1 :].split(os.sep) if parent != root else ():
            current = current + os.sep + part
            known = self._fds.get(current)
            fd = (
                known
                if known is not None
                else self._cache(current, self._open_child(fd, part, target, create))
            )
        return fd

    @staticmethod
    def _open_child(dir_fd: int, part: str, target: str, create: bool) -> int:
        try:
            return os.open(part, _CHILD_DIRECTORY, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise
            # Another thread of the same commit may make it first.
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=dir_fd)
            return os.open(part, _CHILD_DIRECTORY, dir_fd=dir_fd)
        except OSError as e:
            raise Refused(
                f"{part} in the path of {target} is a symlink or not a directory on the host"
            ) from e
