"""Limits a session is held to while it runs: the cgroup counters of refused forks and
memory-limit hits (reported as they happen), and the free space of the disk its writes are
staged on (the session is stopped before it fills it)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from app.events import EventBus, EventKind

LIMIT_POLL_SECONDS = 0.5
DISK_POLL_SECONDS = 0.1  # statvfs is cheap, and a disk fills at a GB a second
# What an agent writes is staged on the disk of Airlock's state, with no quota of its own
# (that needs privileges): sessions stop before they leave less than this free there.
DISK_RESERVE = 128 * 1024**2


async def watch_limits(session: str, pid: int, bus: EventBus) -> None:
    """Polls the container's cgroup for hits of the pids and memory limits: the engine
    reports an OOM kill only at exit, and pids exhaustion not at all."""
    counters = await asyncio.to_thread(limit_counter_files, pid)
    # The container's cgroup is its own, made at its start: what the counters hold at the
    # first look (an agent can hit a limit before then) is already this session's.
    seen: dict[str, int] = {}
    while counters:
        for name, path in counters.items():
            value = await asyncio.to_thread(read_counter, path)
            if value is not None and value > seen.get(name, 0):
                bus.emit(EventKind.SESSION_LIMIT, session, name, count=value)
                seen[name] = value
        await asyncio.sleep(LIMIT_POLL_SECONDS)


def disk_short(where: Path, reserve: int) -> str | None:
    """Why the disk the sessions stage their writes on is too full for one, if it is.
    Blocking (statvfs)."""
    st = os.statvfs(where)
    left = st.f_bavail * st.f_frsize
    if left >= reserve:
        return None
    return (
        f"only {left // 1024**2} MiB left on the disk of {where}, "
        f"where sessions stage their writes (at least {reserve // 1024**2} "
        "MiB must stay free)"
    )


async def watch_disk(where: Path, reserve: int, stopped: Callable[[], bool]) -> str:
    """Returns, with why, once the disk gets too full for a session to go on: an overlay's
    upper layer and the saves area have no quota of their own. Returns "" if `stopped`
    (the session is being stopped anyway)."""
    while not stopped():
        short = await asyncio.to_thread(disk_short, where, reserve)
        if short is not None:
            return short
        await asyncio.sleep(DISK_POLL_SECONDS)
    return ""


def limit_counter_files(pid: int) -> dict[str, Path]:
    """The cgroup files counting refused forks and memory-limit hits of a process (v1 or v2)."""
    counters: dict[str, Path] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return counters
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            counters.setdefault("pids", base / "pids.events")
            counters.setdefault("memory", base / "memory.events")
        elif "pids" in controllers.split(","):
            counters["pids"] = Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "pids.events"
        elif "memory" in controllers.split(","):
            counters["memory"] = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.failcnt"
    return {name: p for name, p in counters.items() if p.is_file()}


def read_counter(path: Path) -> int | None:
    """`max N` (pids.events), `max N` in memory.events, or a bare number (memory.failcnt)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "max" and value.strip().isdigit():
            return int(value)
        if not value and key.strip().isdigit():
            return int(key)
    return 0
