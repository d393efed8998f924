"""The watch library, held so that nothing it does can blind the activity watch unnoticed.

watchdog's inotify observer (6.0.x, pinned in pyproject.toml) has two ways to lose file
events without a word, both of which an agent can bring about:

- When the kernel's event queue overflows (a create/delete storm faster than the reader),
  the kernel queues one IN_Q_OVERFLOW event; watchdog skips it (it has watch descriptor -1)
  and goes on as if nothing was lost.
- Any exception in one of its threads (e.g. a KeyError on an event for a watch it already
  forgot, which an overflow makes likely) ends that thread; the others wait forever.

watchdog offers no hook for either, so this module subclasses its emitter, its inotify
buffer and the inotify reader (the reader's `read_events` is a copy of 6.0.0's with the
overflow reported instead of skipped: the overflow is only visible inside it), and wraps
each thread's `run` so that any exception is reported. Both become `lost(cause)`, which
TreeWatcher turns into an activity.gap and a rescan. A newer watchdog must be checked
against this copy before the pin is moved.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable

from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_buffer import InotifyBuffer
from watchdog.observers.inotify_c import (
    DEFAULT_EVENT_BUFFER_SIZE,
    Inotify,
    InotifyConstants,
    InotifyEvent,
)
from watchdog.utils import BaseThread
from watchdog.utils.delayed_queue import DelayedQueue

log = logging.getLogger(__name__)

# Why events were lost, and since when at the earliest; called on whichever thread noticed.
Lost = Callable[[str, float], None]
OVERFLOW = "inotify queue overflowed"
_LARGEST_EVENT = 16 + 256  # struct inotify_event and a NAME_MAX name with its NUL


def _died(thread: str, error: BaseException) -> str:
    return f"the {thread} thread died: {type(error).__name__}: {error}"


class _Inotify(Inotify):
    def __init__(self, path: bytes, lost: Lost, *, recursive: bool, event_mask: int | None) -> None:
        self._lost = lost
        self.drained_at = time.time()  # when a read last emptied the kernel's queue
        self.synced_at = self.drained_at  # the same, before the buffer being parsed
        super().__init__(path, recursive=recursive, event_mask=event_mask)

    def overflowed(self) -> None:
        # What was lost came after the last time the queue was seen empty: the buffer with
        # the overflow in it is the one that emptied it now.
        self._lost(OVERFLOW, self.synced_at)

    def read_events(
        self, *, event_buffer_size: int = DEFAULT_EVENT_BUFFER_SIZE
    ) -> list[InotifyEvent]:
        """watchdog 6.0.0's Inotify.read_events, verbatim but for the overflow."""
        # HACK: We need to traverse the directory path
        # recursively and simulate events for newly
        # created subdirectories/files. This will handle
        # mkdir -p foobar/blah/bar; touch foobar/afile

        def _recursive_simulate(src_path: bytes) -> list[InotifyEvent]:
            events = []
            for root, dirnames, filenames in os.walk(src_path):
                for dirname in dirnames:
                    with contextlib.suppress(OSError):
                        full_path = os.path.join(root, dirname)
                        wd_dir = self._add_watch(full_path, self._event_mask)
                        e = InotifyEvent(
                            wd_dir,
                            InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR,
                            0,
                            dirname,
                            full_path,
                        )
                        events.append(e)
                for filename in filenames:
                    full_path = os.path.join(root, filename)
                    wd_parent_dir = self._wd_for_path[os.path.dirname(full_path)]
                    e = InotifyEvent(
                        wd_parent_dir,
                        InotifyConstants.IN_CREATE,
                        0,
                        filename,
                        full_path,
                    )
                    events.append(e)
            return events

        event_buffer = b""
        while True:
            try:
                with self._lock:
                    if self._closed:
                        return []

                    self._is_reading = True

                if self._check_inotify_fd():
                    event_buffer = os.read(self._inotify_fd, event_buffer_size)
                    # Added: when the queue was last seen empty, before this read.
                    self.synced_at = self.drained_at
                    if len(event_buffer) < event_buffer_size - _LARGEST_EVENT:
                        self.drained_at = time.time()

                with self._lock:
                    self._is_reading = False

                    if self._closed:
                        self._close_resources()
                        return []
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue

                if e.errno == errno.EBADF:
                    return []

                raise
            break

        with self._lock:
            event_list = []
            for wd, mask, cookie, name in Inotify._parse_event_buffer(event_buffer):
                if wd == -1:
                    if mask & InotifyConstants.IN_Q_OVERFLOW:
                        self.overflowed()  # the one change from watchdog 6.0.0
                    continue
                wd_path = self._path_for_wd[wd]
                src_path = os.path.join(wd_path, name) if name else wd_path  # avoid trailing slash
                inotify_event = InotifyEvent(wd, mask, cookie, name, src_path)

                if inotify_event.is_moved_from:
                    self.remember_move_from_event(inotify_event)
                elif inotify_event.is_moved_to:
                    move_src_path = self.source_for_move(inotify_event)
                    if move_src_path in self._wd_for_path:
                        moved_wd = self._wd_for_path[move_src_path]
                        del self._wd_for_path[move_src_path]
                        self._wd_for_path[inotify_event.src_path] = moved_wd
                        self._path_for_wd[moved_wd] = inotify_event.src_path
                        if self.is_recursive:
                            for _path in self._wd_for_path.copy():
                                if _path.startswith(move_src_path + os.path.sep.encode()):
                                    moved_wd = self._wd_for_path.pop(_path)
                                    _move_to_path = _path.replace(
                                        move_src_path, inotify_event.src_path
                                    )
                                    self._wd_for_path[_move_to_path] = moved_wd
                                    self._path_for_wd[moved_wd] = _move_to_path
                    src_path = os.path.join(wd_path, name)
                    inotify_event = InotifyEvent(wd, mask, cookie, name, src_path)

                if inotify_event.is_ignored:
                    # Clean up book-keeping for deleted watches.
                    path = self._path_for_wd.pop(wd)
                    if self._wd_for_path[path] == wd:
                        del self._wd_for_path[path]

                event_list.append(inotify_event)

                if self.is_recursive and inotify_event.is_directory and inotify_event.is_create:
                    # TODO: When a directory from another part of the
                    # filesystem is moved into a watched directory, this
                    # will not generate events for the directory tree.
                    # We need to coalesce IN_MOVED_TO events and those
                    # IN_MOVED_TO events which don't pair up with
                    # IN_MOVED_FROM events should be marked IN_CREATE
                    # instead relative to this directory.
                    try:
                        self._add_watch(src_path, self._event_mask)
                    except OSError:
                        continue

                    event_list.extend(_recursive_simulate(src_path))

        return event_list


class _Buffer(InotifyBuffer):
    """watchdog's InotifyBuffer around our reader; its thread reports how it ends."""

    def __init__(self, path: bytes, lost: Lost, *, recursive: bool, event_mask: int | None) -> None:
        # InotifyBuffer.__init__ builds its reader itself: this is it with ours instead.
        BaseThread.__init__(self)
        self._queue = DelayedQueue[InotifyEvent | tuple[InotifyEvent, InotifyEvent]](self.delay)
        self._inotify = self._reader = _Inotify(
            path, lost, recursive=recursive, event_mask=event_mask
        )
        self._lost = lost
        self.start()

    @property
    def fd(self) -> int:
        return int(self._inotify.fd)

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:
            log.exception("inotify reader thread died")
            self._lost(_died("inotify reader", e), self._reader.synced_at)
            raise


class _Emitter(InotifyEmitter):
    lost: Lost = staticmethod(lambda cause, since: None)  # set per observer (see Observer)

    def on_thread_start(self) -> None:
        path = os.fsencode(self.watch.path)
        self._inotify = _Buffer(
            path,
            self.lost,
            recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
        )

    @property
    def buffer(self) -> _Buffer | None:
        inotify = self._inotify
        return inotify if isinstance(inotify, _Buffer) else None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:
            log.exception("inotify emitter thread died")
            self.lost(_died("inotify emitter", e), time.time())
            raise


class Observer(BaseObserver):
    """An inotify observer whose lost events and dead threads are reported to `lost`."""

    def __init__(self, lost: Lost) -> None:
        emitter = type("Emitter", (_Emitter,), {"lost": staticmethod(lost)})
        super().__init__(emitter)
        self._lost = lost

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:
            log.exception("file event dispatcher thread died")
            self._lost(_died("file event dispatcher", e), time.time())
            raise

    def dead_thread(self) -> str | None:
        """Which of its threads has ended without being asked to, if one has."""
        if not self.should_keep_running():
            return None
        if not self.is_alive():
            return "file event dispatcher"
        for emitter in _emitters(self):
            if not emitter.should_keep_running():
                continue  # unscheduled, or its root was deleted
            if not emitter.is_alive():
                return "inotify emitter"
            buffer = emitter.buffer
            if buffer is not None and buffer.should_keep_running() and not buffer.is_alive():
                return "inotify reader"
        return None

    def inotify_fds(self) -> list[int]:
        """The inotify descriptors of its watches, one per scheduled tree."""
        return [e.buffer.fd for e in _emitters(self) if e.buffer is not None]


def _emitters(observer: BaseObserver) -> list[_Emitter]:
    return [e for e in list(observer.emitters) if isinstance(e, _Emitter)]
