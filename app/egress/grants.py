"""Network grants as the proxies of one process see them: looked up in memory on each
request, stored in the state store, and watched there for revocation by any process.

An answer to a network or upload question with a lifetime (this session, a time, always for
the profile) is a `NetworkGrant`, stored like a file grant: `airlock grants` lists it, the
Grants tab shows it, `airlock revoke` or the tab revokes it. Revocation may come from another
process (`airlock revoke` while `airlock run` serves the session), and a revoked host must be
cut at once, so the book reads the store's active network grants every `POLL_SECONDS` (a
small table, read in a worker thread) and at once when this process announces a revocation
on its bus. Whatever left the active set (revoked, expired) goes to the listeners: each
session's proxy ends the connections that a grant of it let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from app.errors import AirlockError
from app.events import Event, EventBus, EventKind
from app.grants import Access, NetworkGrant
from app.store import StateStore

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5

Listener = Callable[[list[NetworkGrant]], None]


class NetworkGrants:
    """The active network grants; without a store (tests, a proxy on its own), they live
    in memory for as long as the object does."""

    def __init__(self, store: StateStore | None = None, bus: EventBus | None = None) -> None:
        self._store = store
        self._active: dict[str, NetworkGrant] = {}
        self._index: dict[tuple[str, int, Access], list[NetworkGrant]] = {}
        self._listeners: list[Listener] = []
        self._watch: asyncio.Task[None] | None = None
        self._soon: asyncio.Task[None] | None = None
        if bus is not None:
            bus.attach(self._on_event)

    def find(
        self, session: str, profile: str, host: str, port: int, access: Access, now: float
    ) -> NetworkGrant | None:
        """The newest active grant that answers `access` to `host:port` for the session."""
        found = None
        for grant in self._index.get((host.lower().rstrip("."), port, access), ()):
            if (
                grant.active(now)
                and grant.applies(session, profile)
                and (found is None or grant.created_at > found.created_at)
            ):
                found = grant
        return found

    async def add(self, grant: NetworkGrant) -> None:
        if self._store is not None:
            await asyncio.to_thread(self._store.add_network_grant, grant)
        self._replace({**self._active, grant.id: grant})

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Calls `listener(gone)` with the grants that stopped being active; the watch of
        the store runs while anyone listens. Returns the unsubscribe function."""
        self._listeners.append(listener)
        if self._store is not None and self._watch is None:
            self._watch = asyncio.ensure_future(self._watching())

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)
            if not self._listeners and self._watch is not None:
                self._watch.cancel()
                self._watch = None

        return unsubscribe

    async def refresh(self) -> None:
        """Reads the active grants again; tells the listeners what is gone."""
        now = time.time()
        if self._store is None:
            active = {k: g for k, g in self._active.items() if g.active(now)}
        else:
            grants = await asyncio.to_thread(self._store.network_grants, now)
            active = {g.id: g for g in grants}
        gone = [g for k, g in self._active.items() if k not in active]
        self._replace(active)
        if gone:
            for listener in tuple(self._listeners):
                try:
                    listener(gone)
                except Exception:
                    log.exception("a network grant listener failed")

    def _replace(self, active: dict[str, NetworkGrant]) -> None:
        self._active = active
        index: dict[tuple[str, int, Access], list[NetworkGrant]] = {}
        for grant in active.values():
            index.setdefault((grant.host, grant.port, grant.access), []).append(grant)
        self._index = index

    async def _watching(self) -> None:
        while True:
            try:
                await self.refresh()
            except (AirlockError, OSError) as e:
                log.warning("cannot read the network grants: %s", e)
            await asyncio.sleep(POLL_SECONDS)

    def _on_event(self, event: Event) -> None:
        """A revocation (or its undo) announced in this process is applied at once, not at
        the next poll."""
        if not event.details.get("network") or not (
            event.kind is EventKind.GRANT_REVOKED
            or (event.kind is EventKind.GRANT_ADDED and event.details.get("restored"))
        ):
            return
        if self._soon is None or self._soon.done():
            with contextlib.suppress(RuntimeError):  # no loop: nothing here is running
                self._soon = asyncio.get_running_loop().create_task(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except (AirlockError, OSError) as e:
            log.warning("cannot read the network grants: %s", e)

    def grant_added_details(self, grant: NetworkGrant) -> dict[str, Any]:
        """What the `grant.added` event of a network grant says."""
        return {
            "grant": grant.id,
            "network": True,
            "access": str(grant.access),
            "allowed": grant.allowed,
            "lifetime": str(grant.lifetime),
            "expires_at": grant.expires_at,
            "profile": grant.profile,
        }
