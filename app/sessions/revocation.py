"""Revoking grants from running sessions: a pure plan (what leaves which session's view,
which sessions stop, what is announced) over facts gathered first, and its executor.

A read-only grant is a set of hard links in the session's view: they go, and with them every
path to the host files. A read-write file's staged copy is moved out of the agent's reach, and
kept for review. A read-write folder is an overlay mounted in the agent's container, which
keeps whatever it looked up or copied up, and which the agent's working directory pins even if
detached: no unprivileged way takes it back from a running agent. So revoking one stops the
session (its agent killed at once); its staged changes stay for `airlock changes` and `commit`.

Undo (`restore`, from the loop `arestore`) re-grants: the grant is in force again and a
read-only one reappears in the views of the live sessions that had it. What cannot be given
back is said, not pretended: a stopped session stays stopped, and a read-write file's
withdrawn copy stays with the changes for review (the agent would write over what the user
may already be reviewing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.delivery import DOCUMENTS
from app.endings import request_stop
from app.errors import GrantError
from app.events import EventBus, EventKind
from app.grants import AnyGrant, Grant, Mode, NetworkGrant
from app.paths import Dirs
from app.sessions.engine import Engine, kill_agent
from app.staging import RootKind, SessionStaging
from app.store import StateStore
from app.threads import thread_bus
from app.view import SessionView, anchors_for

ADDED = EventKind.GRANT_ADDED
TREE_STOPPED = (
    "a read-write folder cannot be taken back from a running agent: the session "
    "was stopped; its staged changes are kept for review"
)


@dataclass(frozen=True, slots=True)
class Shown:
    """A grant shown in a session's view at its own path, and whether it is a folder."""

    grant: Grant
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Reach:
    """What revoking a grant meets in one live session that uses it."""

    session: str
    staged_tree: bool = False  # the grant is a read-write folder staged as an overlay here
    location: str | None = None  # where it was placed mid-run (documents or saves area)
    is_dir: bool = False  # the granted path is a folder
    others: tuple[Shown, ...] = ()  # the session's other live grants shown at their own path


# The steps of a plan, in the order they are to be carried out.


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Move the grant's staged file copies out of the agent's reach (kept for review)."""

    session: str
    grant: str


@dataclass(frozen=True, slots=True)
class StopAgent:
    session: str


@dataclass(frozen=True, slots=True)
class Unshow:
    """Remove `path` from the session's view, leaving the mount points in `keep`."""

    session: str
    path: Path
    keep: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Reshow:
    """Show `path` again: another live grant still covers it."""

    session: str
    path: Path


@dataclass(frozen=True, slots=True)
class Announce:
    session: str | None
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict)
    kind: EventKind = EventKind.GRANT_REVOKED  # an undo's is grant.added, with `restored`


@dataclass(frozen=True, slots=True)
class ShowAt:
    """Show `path` again at `at`, where it was placed mid-run (the documents area)."""

    session: str
    path: Path
    at: Path


Step = Withdraw | StopAgent | Unshow | Reshow | ShowAt | Announce

NOT_RESTORED_TREE = (
    "the session was stopped when the read-write folder was revoked; the grant is back "
    "for its next sessions, not for this one"
)
NOT_RESTORED_FILE = (
    "a read-write file's staged copy stays with the changes for review; grant it again "
    "from the agent to write it"
)


def plan_revocation(grant: Grant, reaches: Sequence[Reach], linked: bool) -> list[Step]:
    """The steps that take `grant` out of the live sessions it `reaches`. `linked`: some
    session, live or not, ever had it; if none did, the revocation is announced once on its
    own."""
    steps: list[Step] = []
    subject = str(grant.path)
    for reach in reaches:
        session = reach.session
        steps.append(Withdraw(session, grant.id))
        if reach.staged_tree:
            steps += [
                StopAgent(session),
                Unshow(session, grant.path, (Path(DOCUMENTS),)),
                Announce(
                    session, subject, {"grant": grant.id, "stopped": True, "reason": TREE_STOPPED}
                ),
            ]
            continue
        if reach.location is not None:
            steps += [
                Unshow(session, Path(reach.location), (Path(DOCUMENTS),)),
                Announce(session, subject, {"grant": grant.id, "location": reach.location}),
            ]
            continue
        anchors = anchors_for(
            [(o.grant.path, o.is_dir) for o in reach.others] + [(grant.path, reach.is_dir)]
        )
        steps.append(Unshow(session, grant.path, (*anchors, Path(DOCUMENTS))))
        # A path also covered by another live grant stays visible.
        steps += [
            Reshow(session, o.grant.path)
            for o in reach.others
            if o.grant.covers(grant.path) or grant.covers(o.grant.path)
        ]
        steps.append(Announce(session, subject, {"grant": grant.id}))
    if not linked:
        steps.append(Announce(grant.session, subject, {"grant": grant.id}))
    return steps


def plan_restore(grant: Grant, reaches: Sequence[Reach]) -> list[Step]:
    """The steps that give `grant` back to the live sessions it reached when it was revoked
    (the undo of a revocation): a read-only grant is shown again where it was; what cannot
    be given back is announced with why."""
    steps: list[Step] = []
    subject = str(grant.path)
    for reach in reaches:
        session = reach.session
        if reach.staged_tree:
            why = NOT_RESTORED_TREE
        elif grant.mode is Mode.READ_WRITE:
            why = NOT_RESTORED_FILE
        else:
            if reach.location is not None:
                steps.append(ShowAt(session, grant.path, Path(reach.location)))
            else:
                steps.append(Reshow(session, grant.path))
            steps.append(Announce(session, subject, {"grant": grant.id, "restored": True}, ADDED))
            continue
        back = {"grant": grant.id, "restored": False, "reason": why}
        steps.append(Announce(session, subject, back, ADDED))
    if not reaches:
        steps.append(Announce(grant.session, subject, {"grant": grant.id, "restored": True}, ADDED))
    return steps


class Revocation:
    """Carries out revocations and their undo. `revoke` and `restore` block (database, tree
    walks, engine calls) and publish on the `bus` they are given from the calling thread:
    for the command line. From the loop, `arevoke` and `arestore` do the same in a worker
    thread and publish on the loop's thread, on the bus the revocation was built with."""

    def __init__(
        self, engine: Engine, owner: str, store: StateStore, dirs: Dirs, bus: EventBus
    ) -> None:
        self._engine = engine
        self._owner = owner
        self._store = store
        self._dirs = dirs
        self._bus = bus

    async def arevoke(self, grant_ids: Sequence[str]) -> list[AnyGrant]:
        relay = thread_bus(self._bus, asyncio.get_running_loop())
        return await asyncio.to_thread(self.revoke, tuple(grant_ids), relay)

    async def arestore(self, grant_ids: Sequence[str]) -> list[AnyGrant]:
        relay = thread_bus(self._bus, asyncio.get_running_loop())
        return await asyncio.to_thread(self.restore, tuple(grant_ids), relay)

    async def expire(self, grant: str) -> None:
        """A grant whose time is up (app/sessions/delivery.py's timers): revoked as if by
        the user, so it leaves the running sessions the same way."""
        await self.arevoke([grant])

    def revoke(self, grant_ids: Sequence[str], bus: EventBus) -> list[AnyGrant]:
        """Revokes grants and takes them out of every running session that uses them. A
        network grant's revocation is announced; the proxies (of this process at once, of
        any other within `app.egress.grants.POLL_SECONDS`) end what it let through."""
        grants: list[AnyGrant | None] = [
            self._store.grant(grant_id) or self._store.network_grant(grant_id)
            for grant_id in grant_ids
        ]
        missing = [gid for gid, g in zip(grant_ids, grants, strict=True) if g is None]
        if missing:
            raise GrantError(f"no grant {missing[0]!r} (see `airlock grants`)")
        revoked = [g for g in grants if g is not None and g.revoked_at is None]
        self._store.revoke(g.id for g in revoked)
        for network in (g for g in revoked if isinstance(g, NetworkGrant)):
            bus.emit(
                EventKind.GRANT_REVOKED,
                network.session,
                network.subject,
                grant=network.id,
                network=True,
                access=str(network.access),
                profile=network.profile,
            )
        self._revoke_files([g for g in revoked if isinstance(g, Grant)], bus)
        return revoked

    def restore(self, grant_ids: Sequence[str], bus: EventBus) -> list[AnyGrant]:
        """The undo of `revoke`: the grants are in force again (those that are revoked and
        not expired), given back to the live sessions they reached where that is possible
        (`plan_restore`), and announced as `grant.added` with `restored`."""
        now = time.time()
        grants = [
            self._store.grant(grant_id) or self._store.network_grant(grant_id)
            for grant_id in grant_ids
        ]
        back = [
            g
            for g in grants
            if g is not None
            and g.revoked_at is not None
            and (g.expires_at is None or now < g.expires_at)
        ]
        self._store.unrevoke(g.id for g in back)
        for grant in back:
            if isinstance(grant, NetworkGrant):
                bus.emit(
                    EventKind.GRANT_ADDED,
                    grant.session,
                    grant.subject,
                    grant=grant.id,
                    network=True,
                    restored=True,
                    access=str(grant.access),
                    allowed=grant.allowed,
                    profile=grant.profile,
                )
                continue
            reaches = [
                self._reach(grant, session, now)
                for session in self._store.sessions_using(grant.id)
                if (record := self._store.session(session)) is not None and record.live
            ]
            for step in plan_restore(grant, reaches):
                self._carry_out(step, bus)
        return [g for g in back]

    def _revoke_files(self, revoked: list[Grant], bus: EventBus) -> None:
        now = time.time()
        for grant in revoked:
            sessions = self._store.sessions_using(grant.id)
            reaches = [
                self._reach(grant, session, now)
                for session in sessions
                if (record := self._store.session(session)) is not None and record.live
            ]
            for step in plan_revocation(grant, reaches, linked=bool(sessions)):
                self._carry_out(step, bus)

    def _reach(self, grant: Grant, session: str, now: float) -> Reach:
        if any(
            r.grant == grant.id and r.kind is RootKind.TREE for r in self._staging(session).roots()
        ):
            return Reach(session, staged_tree=True)
        location = self._store.grant_location(session, grant.id)
        if location is not None:
            return Reach(session, location=location)
        others = tuple(
            Shown(g, g.path.is_dir())
            for g in self._store.session_grants(session, now)
            if self._store.grant_location(session, g.id) is None
        )
        return Reach(session, is_dir=grant.path.is_dir(), others=others)

    def _staging(self, session: str) -> SessionStaging:
        return SessionStaging(self._dirs.sessions / session / "staging", session)

    def _view(self, session: str) -> SessionView:
        return SessionView(self._dirs.sessions / session / "view")

    def _carry_out(self, step: Step, bus: EventBus) -> None:
        match step:
            case Withdraw(session, grant):
                self._staging(session).withdraw(grant)
            case StopAgent(session):
                # Its end says why, not only the signal (app/endings.py).
                request_stop(
                    self._dirs.sessions,
                    session,
                    "stopped: a read-write folder it was granted was revoked",
                )
                kill_agent(self._engine, self._owner, session)
            case Unshow(session, path, keep):
                self._view(session).remove(path, keep=list(keep))
            case Reshow(session, path):
                self._view(session).add(path)
            case ShowAt(session, path, at):
                self._view(session).add(path, at)
            case Announce(session, subject, details, kind):
                bus.emit(kind, session, subject, **details)
