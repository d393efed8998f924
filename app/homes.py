"""Persistent agent homes: a profile with `[home] persist = true` keeps its agent's HOME from
one session to the next, in Airlock's state directory (`homes/PROFILE`), never under a
granted path (views never mirror Airlock's own directories).

Nothing of the user's goes in: the home starts empty, and a route's key never enters any
container (the proxy adds it on the way out), so it cannot end up here either. The size
limit of a kept home is checked when a session starts and every few seconds while it runs
(a bind mount has no quota an unprivileged supervisor could set); a session whose agent
fills it past the limit is stopped with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.container import AGENT_HOME, BindMount, ContainerAdditions
from app.endings import request_stop
from app.errors import EngineError, SessionError
from app.paths import Dirs
from app.profiles import NAME_PATTERN

if TYPE_CHECKING:
    from app.sessions import Engine, SessionContext

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class KeptHome:
    profile: str
    path: Path
    size: int  # bytes on disk
    used_at: float  # last change


def homes_dir(dirs: Dirs) -> Path:
    return dirs.state / "homes"


def usage(path: Path) -> int:
    """Bytes on disk under `path`, without following links or leaving its file system."""
    total = 0
    try:
        device = os.lstat(path).st_dev
    except OSError:
        return 0
    pending = [path]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                pending.append(Path(entry.path))
    return total


def kept_homes(dirs: Dirs) -> list[KeptHome]:
    root = homes_dir(dirs)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.is_symlink():
            found.append(KeptHome(path.name, path, usage(path), path.stat().st_mtime))
    return found


def remove_home(dirs: Dirs, profile: str, live_profiles: set[str]) -> Path:
    """Deletes a profile's kept home; refused while a session of that profile runs."""
    import re

    if not re.fullmatch(NAME_PATTERN, profile):
        raise SessionError(f"{profile!r} is not a profile name")
    path = homes_dir(dirs) / profile
    if not path.is_dir() or path.is_symlink():
        raise SessionError(f"no kept home for profile {profile!r} (see `airlock homes`)")
    if profile in live_profiles:
        raise SessionError(
            f"a session of {profile} is running and uses its home; stop it "
            "first (`airlock sessions`)"
        )
    # The agent owned what is inside: make every folder ours to empty before removing it.
    shutil.rmtree(path, onerror=_make_writable_then_retry)
    return path


def _make_writable_then_retry(function: Any, path: str, _: object) -> None:
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o700)
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
    function(path)


class AgentHomes:
    """The session extension that mounts a profile's kept home and holds it to its size."""

    def __init__(self, dirs: Dirs, engine: Engine) -> None:
        self._dirs = dirs
        self._engine = engine

    def __call__(self) -> _SessionHome:
        return _SessionHome(self._dirs, self._engine)


class _SessionHome:
    def __init__(self, dirs: Dirs, engine: Engine) -> None:
        self._dirs = dirs
        self._engine = engine
        self._watch: asyncio.Task[None] | None = None
        self._path: Path | None = None
        self._limit = 0

    async def prepare(self, session: SessionContext) -> ContainerAdditions:
        settings = session.profile.home
        if not settings.persist:
            return ContainerAdditions()
        root = homes_dir(self._dirs)
        path = root / session.profile.name
        await asyncio.to_thread(self._make, root, path, session.identity.uid, session.identity.gid)
        used = await asyncio.to_thread(usage, path)
        if used > settings.size:
            raise SessionError(
                f"the kept home of {session.profile.name} holds {used // 1024**2} MiB, over "
                f"its {settings.size // 1024**2} MiB limit: `airlock homes rm "
                f"{session.profile.name}`, or raise [home] size in the profile"
            )
        self._path, self._limit = path, settings.size
        return ContainerAdditions(mounts=(BindMount(path, Path(AGENT_HOME), read_only=False),))

    @staticmethod
    def _make(root: Path, path: Path, uid: int, gid: int) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.getuid() == 0:
            # Root runs agents as someone else: they must reach their home, nothing more.
            os.chmod(root, 0o711)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise SessionError(f"{path} is not a directory; remove it")
        path.mkdir(mode=0o700, exist_ok=True)
        if os.getuid() == 0:
            os.chown(path, uid, gid)

    async def started(self, session: SessionContext, container_id: str) -> None:
        if self._path is not None:
            self._watch = asyncio.get_running_loop().create_task(
                self._hold_to_size(session.id, container_id)
            )

    async def _hold_to_size(self, session: str, container_id: str) -> None:
        assert self._path is not None
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            used = await asyncio.to_thread(usage, self._path)
            if used > self._limit:
                request_stop(
                    self._dirs.sessions,
                    session,
                    f"stopped: its kept home grew past its {self._limit // 1024**2} MiB limit",
                )
                with contextlib.suppress(EngineError):
                    await asyncio.to_thread(self._engine.kill, container_id)
                return

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.utime(self._path, (time.time(), time.time()))
