"""Files granted to a running session after it started (app.delivery.FileDelivery, which the
portal calls): read-only ones linked into its view, read-write ones and saves staged."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path, PurePosixPath

from app.container import Identity
from app.delivery import DOCUMENTS, SAVES
from app.errors import GrantError, SessionError
from app.events import EventBus, EventKind
from app.grants import Grant, GrantRequest, Lifetime, Mode, check_grant_path, grant_for
from app.sessions.registry import RunningSession, SessionRegistry
from app.store import StateStore


class SessionFiles:
    """Implements FileDelivery for the sessions of a registry. `expire` revokes a grant whose
    time is up."""

    def __init__(
        self,
        registry: SessionRegistry,
        store: StateStore,
        bus: EventBus,
        identity: Identity,
        expire: Callable[[str], Coroutine[object, object, None]],
    ) -> None:
        self._registry = registry
        self._store = store
        self._bus = bus
        self._identity = identity
        self._expire = expire

    def _running(self, session: str) -> RunningSession:
        running = self._registry.get(session)
        if running is None:
            raise SessionError(f"session {session!r} is not running in this supervisor")
        return running

    async def open_files(
        self,
        session: str,
        paths: Sequence[Path],
        mode: Mode,
        lifetime: Lifetime,
        until: float | None = None,
    ) -> list[PurePosixPath]:
        running = self._running(session)
        requests = [check_grant_path(path, mode, Path("/")) for path in paths]
        if mode is Mode.READ_WRITE and any(r.path.is_dir() for r in requests):
            raise GrantError(
                "read-write folders can only be granted when a session starts; "
                "grant files, or the folder read-only"
            )
        located: list[PurePosixPath] = []
        for request in requests:
            grant = grant_for(
                request,
                lifetime=lifetime,
                session=None if lifetime is Lifetime.ALWAYS else session,
                profile=running.profile if lifetime is Lifetime.ALWAYS else None,
                expires_at=until,
            )
            if mode is Mode.READ_WRITE:
                located.append(await self.stage_file(running, grant, copy_from_host=True))
                continue
            at = (
                None
                if _under_any(request.path, running.anchors)
                else (Path(DOCUMENTS) / secrets.token_hex(4) / request.path.name)
            )
            mirrored = await asyncio.to_thread(running.view.add, request.path, at)
            await asyncio.to_thread(
                self._store.add_grants, [grant], session=session, location=str(at) if at else None
            )
            inside = PurePosixPath(at or request.path)
            self._bus.emit(
                EventKind.GRANT_ADDED,
                session,
                str(request.path),
                grant=grant.id,
                mode=str(grant.mode),
                lifetime=str(grant.lifetime),
                location=str(inside),
                linked=mirrored.linked,
                copied=mirrored.copied,
            )
            for path, why in mirrored.skipped:
                self._bus.emit(EventKind.GRANT_SKIPPED, session, path, reason=why)
            if grant.expires_at is not None:
                self.schedule_expiry(running, grant)
            located.append(inside)
        return located

    async def save_files(
        self, session: str, targets: Sequence[Path], lifetime: Lifetime
    ) -> list[PurePosixPath]:
        running = self._running(session)
        located = []
        for target in targets:
            target = Path(os.path.abspath(target))
            if not target.parent.is_dir():
                raise GrantError(f"{target.parent}: no such folder to save into")
            if target.exists() and not target.is_file():
                raise GrantError(f"{target}: exists and is not a regular file")
            if target.is_symlink():
                raise GrantError(f"{target}: is a symlink; choose the real file")
            grant = grant_for(
                GrantRequest(target, Mode.READ_WRITE),
                lifetime=Lifetime.SESSION if lifetime is Lifetime.ALWAYS else lifetime,
                session=session,
                expires_at=None,
            )
            located.append(await self.stage_file(running, grant, copy_from_host=False))
        return located

    async def stage_file(
        self, running: RunningSession, grant: Grant, copy_from_host: bool
    ) -> PurePosixPath:
        """A file the agent may write, staged in the session's saves area."""
        token = secrets.token_hex(4)
        await asyncio.to_thread(
            running.staging.add_file,
            grant.path,
            grant.id,
            running.quota,
            running.staging.root / "saves" / token,
            copy_from_host,
            (self._identity.uid, self._identity.gid),
        )
        inside = PurePosixPath(SAVES) / token / grant.path.name
        await asyncio.to_thread(
            self._store.add_grants, [grant], session=running.id, location=str(inside)
        )
        self._bus.emit(
            EventKind.GRANT_ADDED,
            running.id,
            str(grant.path),
            grant=grant.id,
            mode=str(grant.mode),
            lifetime=str(grant.lifetime),
            location=str(inside),
        )
        return inside

    def schedule_expiry(self, running: RunningSession, grant: Grant) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (grant.expires_at or 0) - time.time())
        running.timers.append(loop.call_later(delay, self._expire_now, running, grant.id))

    def _expire_now(self, running: RunningSession, grant: str) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(grant))
        running.tasks.add(task)
        task.add_done_callback(running.tasks.discard)


def _under_any(path: Path, anchors: Sequence[Path]) -> bool:
    return any(path == anchor or anchor in path.parents for anchor in anchors)
