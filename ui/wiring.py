"""The composition root: builds the object graph the commands share, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.audit import AuditLog
from app.engine import connect_engine
from app.events import EventBus
from app.paths import Dirs
from app.profiles import ProfileCatalog
from app.sessions import Supervisor
from app.store import StateStore


@dataclass(frozen=True, slots=True)
class Core:
    dirs: Dirs
    bus: EventBus
    store: StateStore
    catalog: ProfileCatalog


@contextmanager
def open_core(dirs: Dirs) -> Iterator[Core]:
    """Everything but the engine: enough for commands that only read state."""
    dirs.ensure()
    bus = EventBus()
    store = StateStore(dirs.database)
    audit = AuditLog(dirs.audit)
    bus.attach(audit.sink)
    try:
        yield Core(dirs, bus, store, ProfileCatalog(dirs.user_profiles))
    finally:
        bus.detach(audit.sink)
        audit.close()
        store.close()


@contextmanager
def open_supervisor(dirs: Dirs) -> Iterator[Supervisor]:
    with open_core(dirs) as core:
        engine = connect_engine()
        try:
            yield Supervisor(engine, core.store, core.bus, dirs, core.catalog)
        finally:
            engine.close()
