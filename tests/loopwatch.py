"""A blocking detector for every event loop a test runs, in the manner of dbus-fast's: each
callback a loop runs (a task's step, a timer, a reader) is timed, and a test in which one
held its loop longer than `threshold` fails, naming the callback and where it was stuck.

What is timed is the time the callback held the loop minus the time its thread sat runnable
but unscheduled (the kernel's run delay, /proc/thread-self/schedstat): on a loaded machine a
5 ms callback can take 200 ms of wall time without blocking anything, while a blocking call
(a lock wait, an engine request, a sleep) or a long computation counts in full. This is what
keeps the check free of false positives under CI load. Garbage collections are taken out
too: one runs wherever an allocation happens to trigger it, and its length depends on what
the whole test process holds, not on the code it interrupted.

Every loop is covered, asyncio.run's and qasync's alike, because both run their callbacks
through `asyncio.Handle._run`, which is patched once for the session.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTICED = 0.005  # holds shorter than this are not looked at further


@dataclass(frozen=True, slots=True)
class Blocked:
    seconds: float  # held the loop, run delay excluded
    wall: float
    callback: str
    where: tuple[str, ...]  # the loop thread's stack while it was held, innermost last

    def describe(self) -> str:
        stack = "\n".join(f"      {line}" for line in self.where) or "      (not sampled)"
        return (
            f"  {self.seconds * 1000:.0f} ms ({self.wall * 1000:.0f} ms of wall time) in "
            f"{self.callback}\n    stuck at:\n{stack}"
        )


def _run_delay(fd: int) -> int:
    """Nanoseconds this thread has spent runnable but waiting for a CPU."""
    return int(os.pread(fd, 128, 0).split()[1])


@dataclass
class _Held:
    handle: asyncio.Handle
    started: float
    where: tuple[str, ...] = ()


@dataclass
class LoopWatch:
    threshold: float
    blocked: list[Blocked] = field(default_factory=list)
    worst: float = 0.0  # the longest hold of the current test, blocking or not
    _held: dict[int, _Held] = field(default_factory=dict)  # thread id -> callback running
    _local: threading.local = field(default_factory=threading.local)
    _original: Callable[[asyncio.Handle], None] | None = None
    _collecting: dict[int, float] = field(default_factory=dict)  # thread id -> GC start
    _collected: dict[int, float] = field(default_factory=dict)  # thread id -> GC seconds

    def install(self) -> None:
        original = asyncio.Handle._run
        self._original = original
        watch = self

        def timed_run(handle: asyncio.Handle) -> None:
            watch._timed(original, handle)

        asyncio.Handle._run = timed_run  # type: ignore[method-assign]
        gc.callbacks.append(self._gc)
        threading.Thread(target=self._sample, name="loopwatch", daemon=True).start()

    def uninstall(self) -> None:
        if self._original is not None:
            asyncio.Handle._run = self._original  # type: ignore[method-assign]
            self._original = None
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        tid = threading.get_ident()
        if phase == "start":
            self._collecting[tid] = time.perf_counter()
        elif (started := self._collecting.pop(tid, None)) is not None:
            self._collected[tid] = self._collected.get(tid, 0.0) + time.perf_counter() - started

    def reset(self) -> None:
        self.blocked = []
        self.worst = 0.0

    def _fd(self) -> int:
        fd: int | None = getattr(self._local, "fd", None)
        if fd is None:
            fd = self._local.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        return fd

    def _timed(self, original: Callable[[asyncio.Handle], None], handle: asyncio.Handle) -> None:
        fd = self._fd()
        tid = threading.get_ident()
        delay = _run_delay(fd)
        self._collected[tid] = 0.0
        held = self._held[tid] = _Held(handle, time.perf_counter())
        try:
            original(handle)
        finally:
            wall = time.perf_counter() - held.started
            del self._held[tid]
            if wall > NOTICED:
                seconds = wall - (_run_delay(fd) - delay) / 1e9 - self._collected[tid]
                self.worst = max(self.worst, seconds)
                if seconds > self.threshold:
                    self.blocked.append(Blocked(seconds, wall, _describe(handle), held.where))

    def _sample(self) -> None:
        """Notes where each loop thread is while a callback holds it past half the
        threshold, for the report."""
        while True:
            time.sleep(self.threshold / 4)
            now = time.perf_counter()
            frames = None
            for tid, held in tuple(self._held.items()):
                if held.where or now - held.started < self.threshold / 2:
                    continue
                frames = frames or sys._current_frames()
                frame = frames.get(tid)
                if frame is not None:
                    held.where = _stack(frame)


def _describe(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        return f"task {task.get_name()} ({getattr(coro, '__qualname__', coro)})"
    return repr(handle)[:300]


def _stack(frame: object) -> tuple[str, ...]:
    """The frames of the repository's own code (the last few, and the outermost of the
    standard library below them), as "path:line in function"."""
    entries = traceback.extract_stack(frame)  # type: ignore[arg-type]
    ours = [e for e in entries if _ours(e.filename) and e.filename != __file__]
    lines = [f"{Path(e.filename).relative_to(REPO)}:{e.lineno} in {e.name}" for e in ours[-7:]]
    if entries and not _ours(entries[-1].filename):  # stuck in a library: say in which call
        lines.append(f"{entries[-1].filename}:{entries[-1].lineno} in {entries[-1].name}")
    return tuple(lines)


def _ours(filename: str) -> bool:
    path = Path(filename)
    return REPO in path.parents and ".venv" not in path.parts
