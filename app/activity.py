"""Live file activity: inotify on a session's trees, published as coalesced file.* events."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from app.events import Event, EventBus, EventKind, TokenBucket

log = logging.getLogger(__name__)
# watchdog re-adds the watch of a directory it already watches (one created and walked at
# once) and warns each time; harmless, and noise on the terminal `airlock run` runs in.
warnings.filterwarnings("ignore", message="Callback with id .* already exists",
                        category=RuntimeWarning, module="watchdog")

WATCH_LIMIT_FILES = (
    Path("/proc/sys/fs/inotify/max_user_watches"),
    # Per user namespace (Linux >= 5.11); inside a container it may be the lower one.
    Path("/proc/sys/user/max_inotify_watches"),
)

# A file closed after writing needs no event of its own: its writes were reported as they
# happened, which also covers files kept open for a long time. Directory modifications only
# echo the entries' own events.
_KINDS: dict[type[FileSystemEvent], EventKind] = {
    FileOpenedEvent: EventKind.FILE_OPENED,
    FileClosedNoWriteEvent: EventKind.FILE_READ,
    FileModifiedEvent: EventKind.FILE_WRITTEN,
    FileCreatedEvent: EventKind.FILE_CREATED,
    DirCreatedEvent: EventKind.FILE_CREATED,
    FileDeletedEvent: EventKind.FILE_DELETED,
    DirDeletedEvent: EventKind.FILE_DELETED,
    FileMovedEvent: EventKind.FILE_MOVED,
    DirMovedEvent: EventKind.FILE_MOVED,
}
# Kinds that change what a path names: bursts pending on that path are published first, so
# that "wrote a ×9" never appears after "deleted a" that followed those writes.
_RENAMING = frozenset({EventKind.FILE_CREATED, EventKind.FILE_DELETED, EventKind.FILE_MOVED})

Report = Callable[[EventKind, str, dict[str, Any], float], None]

# File activity an agent can make at any speed (a rename loop: 2 600 events a second) becomes
# events one by one at this pace after a first burst; the rest are counted per kind, in one
# event each before the next that goes through.
FILE_EVENTS_BURST = 2000
FILE_EVENTS_PER_SECOND = 200


def watch_limit() -> int | None:
    """The inotify watches this user may hold in all, or None if the kernel does not say."""
    limits = []
    for path in WATCH_LIMIT_FILES:
        try:
            limits.append(int(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(limits, default=None)


class _TreeHandler(FileSystemEventHandler):
    """Runs on watchdog's thread: turns one tree's inotify events into (kind, host path)."""

    def __init__(self, root: str, shown: Path, report: Report) -> None:
        self._prefix = root.rstrip(os.sep) + os.sep
        self._shown = shown
        self._report = report

    def _host_path(self, path: bytes | str) -> str | None:
        path = os.fsdecode(path)
        if not path.startswith(self._prefix):
            return None  # the root itself, or a move's far end outside the tree
        return str(self._shown / path[len(self._prefix) :])

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(type(event))
        # Moving a directory also yields a synthetic move for everything inside it: the
        # directory's own move says it all.
        if kind is None or (event.is_synthetic and kind is EventKind.FILE_MOVED):
            return
        subject = self._host_path(event.src_path)
        if subject is None:
            return
        details: dict[str, Any] = {}
        if event.is_directory:
            details["directory"] = True
        if kind is EventKind.FILE_CREATED:
            kind = self._created_means(os.fsdecode(event.src_path), subject)
            if kind is None:
                return
        if kind is EventKind.FILE_MOVED:
            details["to"] = self._host_path(event.dest_path)
        elif kind is EventKind.FILE_WRITTEN:
            with contextlib.suppress(OSError):  # already gone: its deletion follows
                details["size"] = os.stat(event.src_path).st_size
        self._report(kind, subject, details, time.time())


    @staticmethod
    def _created_means(path: str, subject: str) -> EventKind | None:
        """What a new entry in a watched tree says about the agent.

        In a staging overlay's upper layer, a deletion is recorded by creating a whiteout (a
        character device 0:0, which the agent itself can never create), and the first write
        to an existing file copies it up, creating it there. In the view, entries are only
        created by Airlock mirroring an existing host file. Neither is the agent creating a
        file, so: a whiteout is a deletion, and an entry whose host path exists is none.
        """
        try:
            st = os.lstat(path)
        except OSError:
            return EventKind.FILE_CREATED  # already gone again: the agent was quick
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return EventKind.FILE_DELETED
        if os.path.lexists(subject):
            return None
        return EventKind.FILE_CREATED


@dataclass(slots=True)  # mutable on purpose: a burst grows until it is published
class _Burst:
    first: float
    details: dict[str, Any]
    count: int = 1


class TreeWatcher:
    """Watches one session's trees and publishes what happens in them.

    `trees` maps each watched host directory (e.g. the session's view and staging dirs) to
    the path the user knows it by; events name files by the latter. Repeats of one kind on
    one path within `window` seconds become one event with `count`. A tree that would not
    fit in the inotify limits (`watch_limit`, from the kernel by default) is not watched at
    all and is reported as a `file.unwatched` event instead of being half-watched.
    """

    def __init__(
        self,
        session: str,
        bus: EventBus,
        trees: Mapping[Path, Path],
        *,
        window: float = 0.25,
        watch_limit: int | None = None,
    ) -> None:
        self.session = session
        self._bus = bus
        self._trees = dict(trees)
        self._window = window
        self._watch_limit = watch_limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: InotifyObserver | None = None
        self._pending: dict[tuple[EventKind, str, Any], _Burst] = {}
        self._pending_paths: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._budget = TokenBucket(FILE_EVENTS_BURST, FILE_EVENTS_PER_SECOND)
        self._held: dict[EventKind, _Burst] = {}  # per kind: paths held back, their events

    async def start(self) -> None:
        """Add the watches (in a worker thread: walking a large tree takes a while)."""
        if self._observer is not None:
            return
        self._loop = asyncio.get_running_loop()
        unwatched = await asyncio.to_thread(self._watch_all)
        for shown, details in unwatched:
            log.warning("session %s: not watching %s: %s", self.session, shown, details["reason"])
            self._bus.emit(EventKind.FILE_UNWATCHED, self.session, str(shown), **details)

    async def stop(self) -> None:
        """Remove every watch, then publish what is still being coalesced."""
        observer, self._observer = self._observer, None
        if observer is not None:
            await asyncio.to_thread(_stop_observer, observer)
        self._flush()
        self._publish_held()  # the session's last word on its files, whatever the pace

    # Worker thread.

    def _watch_all(self) -> list[tuple[Path, dict[str, Any]]]:
        limit = self._watch_limit if self._watch_limit is not None else watch_limit()
        unwatched: list[tuple[Path, dict[str, Any]]] = []
        try:
            observer = InotifyObserver()
        except OSError as e:
            reason = _limit_reason(e)
            return [(shown, {"reason": reason, "limit": limit}) for shown in self._trees.values()]
        observer.start()
        self._observer = observer
        for root, shown in self._trees.items():
            directories = _directories(root, stop_after=limit)
            if limit is not None and len(directories) > limit:
                unwatched.append(
                    (shown, {"reason": "more directories than inotify watches", "limit": limit})
                )
                continue
            handler = _TreeHandler(str(root), shown, self._report)
            try:
                watch = observer.schedule(
                    handler, str(root), recursive=True, event_filter=list(_KINDS)
                )
            except OSError as e:
                # Kernels and watchdog versions differ on a limit reached mid-tree: some skip
                # the subdirectory without a word (checked below), others fail here. Either
                # way the tree is not kept, and the count says how much of it was left out.
                missing = _unwatched(observer, directories) or len(directories)
                unwatched.append((shown, {"reason": _limit_reason(e), "limit": limit,
                                          "directories": len(directories),
                                          "unwatched": missing}))
                continue
            missing = _unwatched(observer, directories)
            if missing:
                # watchdog skips subdirectories it cannot watch without a word: don't keep
                # a tree that is watched only in part.
                observer.unschedule(watch)
                unwatched.append(
                    (
                        shown,
                        {
                            "reason": "inotify watch limit reached",
                            "limit": limit,
                            "directories": len(directories),
                            "unwatched": missing,
                        },
                    )
                )
        return unwatched

    def _report(self, kind: EventKind, subject: str, details: dict[str, Any], when: float) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the session is over
            self._loop.call_soon_threadsafe(self._arrive, kind, subject, details, when)

    # Loop thread.

    def _arrive(self, kind: EventKind, subject: str, details: dict[str, Any], when: float) -> None:
        target = details.get("to")
        if kind in _RENAMING and (subject in self._pending_paths or target in self._pending_paths):
            self._flush()
        key = (kind, subject, target)
        burst = self._pending.get(key)
        if burst is not None:
            burst.count += 1
            burst.details = details  # the latest size is the one worth showing
            return
        self._pending[key] = _Burst(when, details)
        self._pending_paths.add(subject)
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(self._window, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        self._pending_paths.clear()
        for (kind, subject, _), burst in pending.items():
            if not self._budget.take():
                held = self._held.setdefault(kind, _Burst(burst.first, {}, 0))
                held.count += burst.count
                held.details["paths"] = held.details.get("paths", 0) + 1
                continue
            self._publish_held()
            details = {**burst.details, "count": burst.count}
            self._bus.publish(Event(kind, self.session, subject, details, time=burst.first))
        if self._held and self._budget.take():
            self._publish_held()
        elif self._held and self._timer is None and self._loop is not None:
            # Nothing else may come to carry them: publish them once the budget allows.
            self._timer = self._loop.call_later(1 / FILE_EVENTS_PER_SECOND, self._flush)

    def _publish_held(self) -> None:
        held, self._held = self._held, {}
        for kind, burst in held.items():
            paths = burst.details["paths"]
            self._bus.publish(Event(kind, self.session, f"({paths} more paths)", {
                "paths": paths, "count": burst.count, "held": True,
                "note": f"faster than {FILE_EVENTS_PER_SECOND} a second: counted, not "
                        "recorded one by one"}, time=burst.first))


def _stop_observer(observer: InotifyObserver) -> None:
    observer.stop()
    observer.join()


def _limit_reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "inotify watch limit reached"
    if error.errno == errno.EMFILE:
        return "inotify instance limit reached"
    return f"cannot watch: {error.strerror}"


_DirectoryId = tuple[int, int]  # (device as the kernel writes it in fdinfo, inode)


def _kernel_dev(st_dev: int) -> int:
    # fdinfo shows the kernel's dev_t, minor in the low 20 bits, not the userspace encoding.
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _directories(root: Path, *, stop_after: int | None) -> dict[_DirectoryId, str]:
    """The directories of a tree that inotify would watch (symlinks not followed); stops
    counting once past `stop_after` — the tree is too large by then anyway."""
    found: dict[_DirectoryId, str] = {}
    stack = [str(root)]
    while stack:
        path = stack.pop()
        try:
            status = os.stat(path, follow_symlinks=False)
            entries = list(os.scandir(path))
        except OSError:
            continue  # vanished or unreadable: inotify could not watch it either
        found[(_kernel_dev(status.st_dev), status.st_ino)] = path
        if stop_after is not None and len(found) > stop_after:
            break
        stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    return found


def _unwatched(observer: InotifyObserver, directories: Mapping[_DirectoryId, str]) -> int:
    """How many of the tree's directories (still there) have no watch in the observer's
    inotify instance, as the kernel lists them in /proc/self/fdinfo."""
    # watchdog 7 keeps its inotify descriptor private; without it there is nothing to check.
    fd = getattr(getattr(observer, "_inotify_fd", None), "_inotify_fd", None)
    if not isinstance(fd, int):
        log.warning("cannot check inotify watches with this watchdog version")
        return 0
    watched: set[_DirectoryId] = set()
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
            for line in fdinfo:
                if line.startswith("inotify "):
                    fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f)
                    watched.add((int(fields["sdev"], 16), int(fields["ino"], 16)))
    except (OSError, KeyError, ValueError):
        log.warning("cannot read the inotify watches from /proc/self/fdinfo")
        return 0
    missing = 0
    for identity, path in directories.items():
        if identity in watched:
            continue
        try:
            status = os.stat(path, follow_symlinks=False)
        except OSError:
            continue  # deleted since the walk
        if (_kernel_dev(status.st_dev), status.st_ino) == identity:
            missing += 1
    return missing
