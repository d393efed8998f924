"""Setting a session up: its grants, the view and staging areas they are shown through, what
its extensions add, and from all that the agent container's spec; and at its end taking all
of it down again. Runs on the loop; file and engine work goes to worker threads."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.container import (
    LABEL_OWNER,
    LABEL_PROFILE,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_SUPERVISOR,
    BindMount,
    ContainerAdditions,
    ContainerSpec,
    Identity,
    VolumeMount,
    build_spec,
)
from app.delivery import DOCUMENTS, SAVES
from app.errors import GrantError
from app.events import EventBus, EventKind
from app.grants import Grant, Lifetime, Mode, check_grant_path, grant_for
from app.paths import Dirs
from app.profiles import Profile
from app.sessions.delivery import SessionFiles
from app.sessions.engine import Engine
from app.sessions.model import ExtensionFactory, LaunchRequest, SessionContext
from app.sessions.registry import RunningSession, process_token
from app.store import StateStore
from app.threads import BlockingCalls
from app.view import anchors_for

log = logging.getLogger(__name__)


class SessionSetup:
    """What a session needs before its container is created, and its removal at the end."""

    def __init__(
        self,
        engine: Engine,
        calls: BlockingCalls,
        store: StateStore,
        bus: EventBus,
        dirs: Dirs,
        identity: Identity,
        owner: str,
        files: SessionFiles,
    ) -> None:
        self._engine = engine
        self._calls = calls
        self.store = store
        self.bus = bus
        self.dirs = dirs
        self.identity = identity
        self.owner = owner
        self._files = files

    async def grants(self, session_id: str, request: LaunchRequest) -> list[Grant]:
        """The session's grants: those asked for, the profile's defaults that can be
        granted (the others are announced as skipped), and those stored for the profile."""
        now = time.time()
        home = Path.home()
        requests = list(request.grants)
        for default in request.profile.grants:
            path = default.resolved(home)
            try:
                requests.append(check_grant_path(path, Mode(default.mode), Path.cwd()))
            except GrantError as e:
                self.bus.emit(EventKind.GRANT_SKIPPED, session_id, str(path), reason=str(e))
        grants = [
            grant_for(r, lifetime=Lifetime.SESSION, session=session_id, now=now) for r in requests
        ]
        stored = await asyncio.to_thread(
            self._record, session_id, grants, request.profile.name, now
        )
        return grants + stored

    def _record(
        self, session: str, grants: Sequence[Grant], profile: str, now: float
    ) -> list[Grant]:
        """Stores the session's grants and links the profile's stored ones to it."""
        self.store.add_grants(grants, session=session)
        stored = self.store.profile_grants(profile, now)
        self.store.link_grants(session, stored)
        return stored

    async def spec(
        self,
        running: RunningSession,
        request: LaunchRequest,
        image: str,
        seccomp: str,
        grants: Sequence[Grant],
        labels: Mapping[str, str],
        additions: Sequence[ContainerAdditions],
    ) -> ContainerSpec:
        rw_trees = [g for g in grants if g.mode is Mode.READ_WRITE and g.path.is_dir()]
        # What a read-write tree covers is already in its overlay.
        effective = [
            g for g in grants if not any(t is not g and t.covers(g.path) for t in rw_trees)
        ]
        staged: list[BindMount | VolumeMount] = []
        quota = request.profile.resources.staging
        owner = (self.identity.uid, self.identity.gid)
        for grant in effective:
            mirrored = await asyncio.to_thread(running.view.add, grant.path)
            self.bus.emit(
                EventKind.GRANT_ADDED,
                running.id,
                str(grant.path),
                grant=grant.id,
                mode=str(grant.mode),
                lifetime=str(grant.lifetime),
                linked=mirrored.linked,
                copied=mirrored.copied,
                directories=mirrored.directories,
            )
            for path, why in mirrored.skipped:
                self.bus.emit(EventKind.GRANT_SKIPPED, running.id, path, reason=why)
            if grant.expires_at is not None:
                self._files.schedule_expiry(running, grant)
            if grant.mode is not Mode.READ_WRITE:
                continue
            if grant in rw_trees:
                root, upper, work = await asyncio.to_thread(
                    running.staging.add_tree, grant.path, grant.id, quota, owner
                )
                lower = running.staging.root / root.id / "lower"
                lower.symlink_to(running.view.mirror_path(grant.path))
                volume = await asyncio.to_thread(
                    self._engine.create_volume,
                    f"airlock-{running.id}-{root.id}",
                    lower,
                    upper,
                    work,
                    labels,
                )
                running.volumes.append(volume)
                running.watched[upper] = grant.path
                staged.append(VolumeMount(volume, grant.path))
            else:
                root = await asyncio.to_thread(
                    running.staging.add_file,
                    grant.path,
                    grant.id,
                    quota,
                    running.staging.root / "files" / secrets.token_hex(4),
                    True,
                    owner,
                )
                staged.append(BindMount(root.upper, grant.path, read_only=False))
        saves = running.staging.root / "saves"
        saves.mkdir(parents=True, exist_ok=True, mode=0o755)
        if os.getuid() == 0:
            os.chown(saves, *owner)
        staged.append(BindMount(saves, Path(SAVES), read_only=False))
        # The documents area is always there, so files granted mid-run have a place to appear.
        anchors = [
            *anchors_for((g.path, g.path.is_dir()) for g in effective if g not in rw_trees),
            Path(DOCUMENTS),
        ]
        mounts = [(running.view.prepare_anchor(anchor), anchor) for anchor in anchors]
        running.anchors = anchors
        running.profile = request.profile.name
        running.approval = request.profile.approval
        running.quota = quota
        return build_spec(
            profile=request.profile,
            session=running.id,
            image=image,
            command=request.command,
            identity=self.identity,
            anchors=mounts,
            first_grant=grants[0].path if grants else None,
            seccomp=seccomp,
            labels=dict(labels, **{LABEL_ROLE: "agent"}),
            additions=additions,
            staged=staged,
            terminal=request.terminal,
        )

    def labels(self, session: str, profile: Profile) -> dict[str, str]:
        return {
            LABEL_SESSION: session,
            LABEL_OWNER: self.owner,
            LABEL_SUPERVISOR: process_token(),
            LABEL_PROFILE: profile.name,
        }

    async def extensions(
        self,
        running: RunningSession,
        request: LaunchRequest,
        labels: Mapping[str, str],
        seccomp: str,
        factories: Sequence[ExtensionFactory],
    ) -> list[ContainerAdditions]:
        """Makes the session's extensions and what each adds to the agent's container."""
        if not factories:
            return []
        running.runtime_dir = self.dirs.runtime / running.id
        # Searchable by the agent's uid, which is not ours when root runs agents as nobody.
        running.runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        context = SessionContext(
            running.id,
            request.profile,
            self.identity,
            running.runtime_dir,
            running.view,
            self.bus,
            labels,
            seccomp,
            files=self._files,
        )
        running.context = context
        additions = []
        for factory in factories:
            extension = factory()
            running.extensions.append(extension)
            additions.append(await extension.prepare(context))
        return additions

    async def tear_down(self, running: RunningSession) -> None:
        """Removes what the session was given and made, its container first."""
        for timer in running.timers:
            timer.cancel()
        for task in running.tasks:
            task.cancel()
        removed = running.container is None or await self._calls.call(
            self._engine.remove, running.container
        )
        if running.guard is not None:
            running.guard.done()
        if removed:
            # No process is left that could write a staged file: committing may move them.
            await asyncio.to_thread(running.staging.seal)
        if running.volumes:
            await self._calls.call(self._engine.remove_volumes, running.volumes)
        for extension in reversed(running.extensions):
            try:
                await extension.close()
            except Exception:
                log.exception("session %s: closing %r failed", running.id, extension)
        if running.runtime_dir is not None:
            await asyncio.to_thread(shutil.rmtree, running.runtime_dir, True)
        if running.gate is not None:
            running.gate.close()
            await asyncio.to_thread(shutil.rmtree, running.gate.directory, True)
        if running.watcher is not None:
            await running.watcher.stop()
        await asyncio.to_thread(running.view.discard)
