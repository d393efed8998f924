"""A session's view: the granted files, mirrored into a tree Airlock owns and mounts read-only.

Why not bind-mount the user's paths directly? Three reasons:
- Revocation. A bind mount cannot be taken out of a running container without
  CAP_SYS_ADMIN in its mount namespace, which an unprivileged supervisor does not have (and
  privileged helpers are not available on every engine). Entries of a directory we own can
  be unlinked at any time, and the agent loses them at once.
- Live grants. Files granted mid-run appear in the already-mounted view, at their own path.
- Safety. Only regular files, directories and symlinks are mirrored. Sockets, FIFOs and device
  nodes inside a granted tree (an ssh-agent or gpg-agent socket, say) would otherwise be a
  channel to host processes.

Files are hard links (no bytes copied, the user's later edits show through); where a link is
impossible (another file system, protected_hardlinks) they are copied. Symlinks are copied as
links and resolve inside the container, where nothing ungranted exists. The tree is mounted
read-only, so neither the links nor the directories can be changed by the agent.

The mount points ("anchors") are the granted directories, and the parent directory of each
granted file, minus those nested inside another anchor.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from app.fs import copy_at, identity_at, is_symlink_at, special_kind

log = logging.getLogger(__name__)

# Bits a mirrored file never keeps: the agent must not gain anything from set-id or sticky bits.
PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


@dataclass(slots=True)
class Mirrored:
    """What mirroring one grant did."""

    linked: int = 0
    copied: int = 0
    directories: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (host path, reason)


def anchors_for(paths: Iterable[tuple[Path, bool]]) -> list[Path]:
    """Mount points for granted (path, is_directory) pairs: the directory itself or the
    file's parent, keeping only the outermost of nested ones. Pure, so tested by table."""
    candidates = sorted({path if is_dir else path.parent for path, is_dir in paths})
    anchors: list[Path] = []
    for candidate in candidates:
        if not any(candidate == a or a in candidate.parents for a in anchors):
            anchors.append(candidate)
    return anchors


class SessionView:
    def __init__(self, root: Path, private: Iterable[Path] = ()) -> None:
        """`private`: Airlock's own directories (its state, with every session's view and
        staging, and its runtime directory), never mirrored, even inside a granted tree:
        other sessions' grants, the audit log and this very view would be in it."""
        self.root = root
        self.private = tuple(private)

    def mirror_path(self, host_path: Path) -> Path:
        return self.root / host_path.relative_to("/")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialises changes between the supervisor and `airlock revoke` in another process."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.root.parent / "view.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def prepare_anchor(self, anchor: Path) -> Path:
        """Creates the (possibly empty) directory that is mounted at `anchor`."""
        mirror = self.mirror_path(anchor)
        self._own_directory(mirror)
        return mirror

    def add(self, host_path: Path, at: Path | None = None) -> Mirrored:
        """Mirrors a granted file or tree, at its own path or at the container path `at`.
        The host path must already be resolved."""
        result = Mirrored()
        with self.locked():
            target = self.mirror_path(at or host_path)
            self._make_parents(target)
            try:
                st = os.lstat(host_path)
            except OSError as e:
                result.skipped.append((str(host_path), e.strerror or "cannot stat"))
                return result
            if any(host_path == p or p in host_path.parents for p in self._private_paths()):
                result.skipped.append((str(host_path), PRIVATE))
                return result
            if stat.S_ISDIR(st.st_mode):
                self._mirror_tree(host_path, target, result)
            else:
                parent_fd = os.open(host_path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    self._mirror_entry(parent_fd, host_path.name, host_path, target, result)
                finally:
                    os.close(parent_fd)
        return result

    def remove(self, host_path: Path, keep: Iterable[Path] = ()) -> None:
        """Takes a grant away. Entries are unlinked in place: a directory is never renamed
        out of the mounted tree, because a process whose working directory is inside it
        could then walk `..` past the mount's root."""
        with self.locked():
            target = self.mirror_path(host_path)
            if not self._in_view(target.parent):
                return  # behind a symlink of the view's: not a mirror of ours to remove
            keep_mirrors = {self.mirror_path(path) for path in keep}
            if target.is_dir() and not target.is_symlink():
                _empty_tree(target)
                if target not in keep_mirrors:
                    _remove_dir(target)
            elif os.path.lexists(target):
                _revoke_file(target)
            self._prune_parents(target.parent, keep_mirrors)

    def discard(self) -> None:
        """Removes the whole view once the session's container is gone."""
        if self.root.exists():
            _empty_tree(self.root)
            _remove_dir(self.root)

    def _make_parents(self, target: Path) -> None:
        self._own_directory(target.parent)

    def _own_directory(self, directory: Path) -> None:
        """Makes `directory` and those above it, up to the root, real directories of the
        view. The view holds symlinks copied from granted trees; an absolute one names a
        host path, so following one here would create, chmod or link in the user's own
        directory. One in the way (the host has a directory there now) is replaced."""
        current = self.root
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        for part in directory.relative_to(self.root).parts:
            current = current / part
            _real_directory(current, 0o755)

    def _in_view(self, directory: Path) -> bool:
        """Whether `directory` is reached from the root through real directories only."""
        current = self.root
        for part in directory.relative_to(self.root).parts:
            current = current / part
            try:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return False
            except FileNotFoundError:
                return False
        return True

    def _prune_parents(self, directory: Path, keep: set[Path]) -> None:
        while directory != self.root and directory not in keep and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _mirror_tree(self, host_root: Path, target_root: Path, result: Mirrored) -> None:
        # fwalk hands out directory fds, so a directory swapped for a symlink mid-walk
        # cannot redirect us outside the granted tree.
        def on_error(error: OSError) -> None:
            result.skipped.append((str(error.filename), error.strerror or "unreadable"))

        private = self._private_ids()
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(
            host_root, onerror=on_error, follow_symlinks=False
        ):
            for name in [d for d in dirnames if identity_at(dir_fd, d) in private]:
                dirnames.remove(name)  # not walked into: Airlock's own
                result.skipped.append((str(Path(dirpath) / name), PRIVATE))
            relative = Path(dirpath).relative_to(host_root)
            mirror_dir = target_root / relative
            dir_stat = os.fstat(dir_fd)
            if relative == Path("."):
                self._own_directory(mirror_dir)
            else:
                _real_directory(mirror_dir, 0o700)  # those above it were made so already
            os.chmod(mirror_dir, (stat.S_IMODE(dir_stat.st_mode) & 0o777) | 0o700)
            result.directories += 1
            for name in filenames + [d for d in dirnames if is_symlink_at(dir_fd, d)]:
                self._mirror_entry(dir_fd, name, Path(dirpath) / name, mirror_dir / name, result)

    def _private_paths(self) -> list[Path]:
        return [p.resolve() for p in self.private]

    def _private_ids(self) -> set[tuple[int, int]]:
        ids = set()
        for path in self.private:
            with suppress(OSError):
                st = os.stat(path)
                ids.add((st.st_dev, st.st_ino))
        return ids

    def _mirror_entry(
        self, dir_fd: int, name: str, host_path: Path, target: Path, result: Mirrored
    ) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            result.skipped.append((str(host_path), e.strerror or "cannot stat"))
            return
        if os.path.lexists(target):
            return  # already granted through another grant
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=dir_fd), target)
            return
        if not stat.S_ISREG(st.st_mode):
            why = f"{special_kind(st.st_mode)} files are never granted"
            result.skipped.append((str(host_path), why))
            return
        if st.st_mode & PRIVILEGE_BITS == 0:
            try:
                os.link(name, target, src_dir_fd=dir_fd, follow_symlinks=False)
                result.linked += 1
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                    raise
        try:
            copy_at(dir_fd, name, target, stat.S_IMODE(st.st_mode) & ~PRIVILEGE_BITS)
            result.copied += 1
        except OSError as e:
            result.skipped.append((str(host_path), e.strerror or "cannot copy"))


PRIVATE = "Airlock's own files (its state, other sessions, its sockets) are never granted"


def _real_directory(path: Path, mode: int) -> None:
    """`path` as a real directory: made if missing; a symlink or file in its place (the
    view's own entry) replaced, never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, mode)
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        os.mkdir(path, mode)


def _revoke_file(path: Path) -> None:
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            # Our own copy: make it unreadable first, for processes that look it up by a
            # path that still resolves while we unlink.
            os.chmod(path, 0)
        path.unlink()
    except FileNotFoundError:
        pass


def _empty_tree(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        directory = Path(dirpath)
        os.chmod(directory, 0o700)
        for name in filenames:
            _revoke_file(directory / name)
        for name in dirnames:
            child = directory / name
            if child.is_symlink():
                child.unlink()
            else:
                _remove_dir(child)


def _remove_dir(path: Path) -> None:
    try:
        os.chmod(path, 0o700)
        path.rmdir()
    except FileNotFoundError:
        pass
