"""Live file activity: inotify on a session's trees, published as coalesced file.* events."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
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

from app.events import Event, EventBudget, EventBus, EventKind
from app.inotify_watch import OVERFLOW, Observer
from app.threads import call_on_loop

log = logging.getLogger(__name__)
# watchdog re-adds the watch of a directory it already watches (one created and walked at
# once) and warns each time; harmless, and noise on the terminal `airlock run` runs in.
warnings.filterwarnings(
    "ignore",
    message="Callback with id .* already exists",
    category=RuntimeWarning,
    module="watchdog",
)

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

# How often the loop checks that every thread of the watch is still running: a dead one is
# found within this, plus the rescan.
HEALTH_SECONDS = 0.2
# A session whose activity overflowed the inotify queue this many times is "partly
# unwatched": a storm that size is no accident, and each overflow hides what it held.
UNWATCHED_AFTER = 3

Unwatched = Callable[[int], None]  # a session became partly unwatched: after N overflows


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

    The watch cannot be blinded unnoticed: when the kernel drops events (its queue
    overflowed) or a thread of the watch library ends, the session gets an `activity.gap`
    event with the cause and the time span, the watch is started afresh, and a rescan of
    the trees turns what changed meanwhile into file.* events (marked `rescan`). After
    UNWATCHED_AFTER overflows the session is "partly unwatched": an `activity.unwatched`
    event, and `on_unwatched(overflows)` (the session's policy: warn or stop).
    """

    def __init__(
        self,
        session: str,
        bus: EventBus,
        trees: Mapping[Path, Path],
        *,
        window: float = 0.25,
        watch_limit: int | None = None,
        on_unwatched: Unwatched | None = None,
    ) -> None:
        self.session = session
        self._bus = bus
        self._trees = dict(trees)
        self._window = window
        self._watch_limit = watch_limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Observer | None = None
        self._on_unwatched = on_unwatched
        self._stopping = False
        self._health: asyncio.TimerHandle | None = None
        self._snapshots: dict[Path, _Snapshot] = {}
        self._last_seen = 0.0  # when the watch last reported, or was (re)started
        self._gap_since = math.inf  # the earliest a loss being resynchronised began
        self._causes: list[str] = []  # of the gap being resynchronised
        self._resync: asyncio.Task[None] | None = None
        self.gaps = 0
        self.overflows = 0
        self._pending: dict[tuple[EventKind, str, Any], _Burst] = {}
        self._pending_paths: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._budget = EventBudget(FILE_EVENTS_BURST, FILE_EVENTS_PER_SECOND)
        self._held: dict[EventKind, _Burst] = {}  # per kind: paths held back, their events

    async def start(self) -> None:
        """Add the watches (in a worker thread: walking a large tree takes a while)."""
        if self._observer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._last_seen = time.time()
        unwatched = await asyncio.to_thread(self._watch_all)
        self._snapshots = await asyncio.to_thread(self._snapshot_all)
        for shown, details in unwatched:
            log.warning("session %s: not watching %s: %s", self.session, shown, details["reason"])
            self._bus.emit(EventKind.FILE_UNWATCHED, self.session, str(shown), **details)
        self._health = self._loop.call_later(HEALTH_SECONDS, self._check_health)

    async def stop(self) -> None:
        """Remove every watch, then publish what is still being coalesced."""
        self._stopping = True
        if self._health is not None:
            self._health.cancel()
        if self._resync is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        observer, self._observer = self._observer, None
        if observer is not None:
            await asyncio.to_thread(_stop_observer, observer)
        self._flush()
        self._publish_held()  # the session's last word on its files, whatever the pace

    @property
    def partly_unwatched(self) -> bool:
        return self.overflows >= UNWATCHED_AFTER

    # Worker thread.

    def _watch_all(self) -> list[tuple[Path, dict[str, Any]]]:
        limit = self._watch_limit if self._watch_limit is not None else watch_limit()
        unwatched: list[tuple[Path, dict[str, Any]]] = []
        observer = Observer(self._lost)
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
                unwatched.append(
                    (
                        shown,
                        {
                            "reason": _limit_reason(e),
                            "limit": limit,
                            "directories": len(directories),
                            "unwatched": missing,
                        },
                    )
                )
                continue
            except Exception as e:  # the library failed on the tree: e.g. nested too deep
                log.exception("session %s: cannot watch %s", self.session, shown)
                unwatched.append((shown, {"reason": f"cannot watch: {type(e).__name__}: {e}"}))
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

    def _snapshot_all(self) -> dict[Path, _Snapshot]:
        return {root: _snapshot(root) for root in self._trees}

    def _report(self, kind: EventKind, subject: str, details: dict[str, Any], when: float) -> None:
        if self._loop is None:
            return
        # False once the loop is closed: the session is over.
        call_on_loop(self._loop, self._arrive, kind, subject, details, when)

    def _lost(self, cause: str, since: float) -> None:
        """Any thread: the watch lost events since `since`, or is about to (one of its
        threads died)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the session is over
            self._loop.call_soon_threadsafe(self._gap, cause, since)

    # Loop thread.

    def _check_health(self) -> None:
        self._health = None
        if self._stopping or self._loop is None:
            return
        observer = self._observer
        dead = observer.dead_thread() if observer is not None else None
        if dead is not None and self._resync is None:
            log.error("session %s: the %s thread of the file watch has stopped", self.session, dead)
            self._gap(f"the {dead} thread stopped", self._last_seen)
        self._health = self._loop.call_later(HEALTH_SECONDS, self._check_health)

    def _gap(self, cause: str, since: float) -> None:
        if self._stopping or self._loop is None:
            return
        self._gap_since = min(self._gap_since, since)
        if cause not in self._causes:
            self._causes.append(cause)
        if cause == OVERFLOW:  # each one, even while the watch restarts after another
            self.overflows += 1
            if self.overflows == UNWATCHED_AFTER:
                self._bus.emit(
                    EventKind.ACTIVITY_UNWATCHED,
                    self.session,
                    "file activity",
                    overflows=self.overflows,
                    note="the agent's file activity overflowed the inotify queue "
                    f"{self.overflows} times: parts of it were not seen",
                )
                if self._on_unwatched is not None:
                    self._on_unwatched(self.overflows)
        if self._resync is None:
            self._resync = self._loop.create_task(self._resynchronise())

    async def _resynchronise(self) -> None:
        """Start the watch afresh and rescan: one activity.gap for all that was lost until
        the new watch was in place (causes reported meanwhile join it)."""
        try:
            while self._causes and not self._stopping:
                await asyncio.sleep(0)  # the threads' other reports of the same loss
                began, causes = self._gap_since, self._causes
                self._causes, self._gap_since = [], math.inf
                await self._restart(began, causes)
        except Exception:
            log.exception("session %s: cannot restart the file watch", self.session)
        finally:
            self._resync = None

    async def _restart(self, began: float, causes: list[str]) -> None:
        self.gaps += 1
        log.warning(
            "session %s: file activity went unwatched (%s); rescanning",
            self.session,
            "; ".join(causes),
        )
        observer, self._observer = self._observer, None
        if observer is not None:
            await asyncio.to_thread(_stop_observer, observer)
        self._flush()  # what arrived before the gap goes before it
        unwatched = await asyncio.to_thread(self._watch_all)
        snapshots = await asyncio.to_thread(self._snapshot_all)
        ended = time.time()
        changes = [
            change
            for root, shown in self._trees.items()
            for change in _changes(
                root, shown, self._snapshots.get(root, {}), snapshots.get(root, {})
            )
        ]
        self._snapshots = snapshots
        self._last_seen = ended
        self._bus.publish(
            Event(
                EventKind.ACTIVITY_GAP,
                self.session,
                "file activity",
                {
                    "cause": "; ".join(causes),
                    "from": began,
                    "to": ended,
                    "seconds": round(ended - began, 3),
                    "rescanned": len(changes),
                    "overflows": self.overflows,
                    "note": "events in this span were lost; the rescan found what changed in it",
                },
                time=ended,
            )
        )
        for shown, details in unwatched:
            self._bus.emit(EventKind.FILE_UNWATCHED, self.session, str(shown), **details)
        for kind, subject, details in changes:
            self._arrive(kind, subject, {**details, "rescan": True}, ended)

    def _arrive(self, kind: EventKind, subject: str, details: dict[str, Any], when: float) -> None:
        self._last_seen = max(self._last_seen, when)
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
            self._bus.publish(
                Event(
                    kind,
                    self.session,
                    f"({paths} more paths)",
                    {
                        "paths": paths,
                        "count": burst.count,
                        "held": True,
                        "note": f"faster than {FILE_EVENTS_PER_SECOND} a second: counted, not "
                        "recorded one by one",
                    },
                    time=burst.first,
                )
            )


def _stop_observer(observer: Observer) -> None:
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


def _unwatched(observer: Observer, directories: Mapping[_DirectoryId, str]) -> int:
    """How many of the tree's directories (still there) have no watch in the observer's
    inotify instances, as the kernel lists them in /proc/self/fdinfo."""
    watched: set[_DirectoryId] = set()
    try:
        for fd in observer.inotify_fds():
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


# What a rescan compares: each entry's type and, for files, size and modification time.
_Entry = tuple[int, int, int]  # (file type bits, size, mtime_ns)
_Snapshot = dict[str, _Entry]  # by path relative to the tree's root


def _snapshot(root: Path) -> _Snapshot:
    """Every entry below `root` (symlinks not followed), as it is now."""
    found: _Snapshot = {}
    stack = [str(root)]
    prefix = str(root).rstrip(os.sep) + os.sep
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue  # vanished or unreadable
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                kind = 0  # an overlay whiteout: the deletion of what it hides
            found[entry.path[len(prefix) :]] = (kind, st.st_size, st.st_mtime_ns)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return found


def _changes(
    root: Path, shown: Path, before: _Snapshot, after: _Snapshot
) -> list[tuple[EventKind, str, dict[str, Any]]]:
    """What a rescan found changed between two snapshots of one tree, as file events."""
    changes: list[tuple[EventKind, str, dict[str, Any]]] = []
    for relative in sorted(before.keys() | after.keys()):
        old, new = before.get(relative), after.get(relative)
        subject = str(shown / relative)
        details: dict[str, Any] = {}
        if (new or old or (0, 0, 0))[0] == stat.S_IFDIR:
            details["directory"] = True
        if new is None or new[0] == 0:
            if old is not None and old[0] != 0:
                changes.append((EventKind.FILE_DELETED, subject, details))
            elif old is None and new is not None:
                changes.append((EventKind.FILE_DELETED, subject, details))  # a new whiteout
        elif old is None or old[0] != new[0]:
            kind = _TreeHandler._created_means(str(root / relative), subject)
            if kind is not None:
                changes.append((kind, subject, details))
        elif old[1:] != new[1:] and new[0] == stat.S_IFREG:
            changes.append((EventKind.FILE_WRITTEN, subject, {"size": new[1]}))
    return changes
