"""The composition root: builds the object graph the commands share, in one place."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.audit import AuditLog, Recorder
from app.consent import ConsentBroker, FrontEnd
from app.engine import connect_engine
from app.events import EventBus
from app.forward import AuditForwarder, load_config
from app.homes import AgentHomes
from app.ocsf import Origin
from app.paths import Dirs
from app.profiles import ProfileCatalog
from app.sessions import DockerEngine, ExtensionFactory, SessionRegistry, Supervisor
from app.store import StateStore


@dataclass(frozen=True, slots=True)
class Core:
    dirs: Dirs
    bus: EventBus
    store: StateStore
    catalog: ProfileCatalog
    recorder: Recorder  # the audit log's sink on the bus


@contextmanager
def open_core(dirs: Dirs) -> Iterator[Core]:
    """Everything but the engine: enough for commands that only read state."""
    dirs.ensure()
    bus = EventBus()
    store = StateStore(dirs.database)
    audit = AuditLog(dirs.audit)
    recorder = Recorder(audit)
    bus.attach(recorder)
    try:
        yield Core(dirs, bus, store, ProfileCatalog(dirs.user_profiles), recorder)
    finally:
        bus.detach(recorder)
        audit.close()
        store.close()


@contextmanager
def open_supervisor(
    dirs: Dirs, front_end: FrontEnd | None = None, long_running: bool = False
) -> Iterator[Supervisor]:
    """The supervisor with everything a session gets: the FileChooser portal on a private
    bus, and the egress proxy for profiles that allow a network. Questions go to
    `front_end` (the desktop app's dialogs, a terminal prompt); without one they are denied.
    A `long_running` supervisor (the desktop app, `airlock daemon`) keeps a network sidecar
    started ahead for the next session; it must `await supervisor.aclose()` before exit."""
    from app.egress.bridge import Egress
    from app.egress.grants import NetworkGrants
    from app.egress.keys import KeyringSecrets
    from app.egress.secret_service import use_login_bus
    from portal.extension import portal_extension

    # Routes read their keys at run time: on an SSH login without the variable, from the
    # Secret Service on the login's own bus, as `airlock secret set` stored them.
    use_login_bus(os.environ, os.getuid())
    with open_core(dirs) as core, _forwarding(dirs):
        engine = connect_engine()
        sessions = SessionRegistry()  # the profile rules answer for the sessions running here
        broker = ConsentBroker(core.bus, front_end, rules=sessions.rule_answer)
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=broker,
            spares=dirs.runtime / "spares" if long_running else None,
            grants=NetworkGrants(core.store, core.bus),
        )
        extensions: list[ExtensionFactory] = [
            AgentHomes(dirs, DockerEngine(engine)),
            portal_extension(broker, hosts=egress),
            egress,
        ]
        supervisor = Supervisor(
            engine,
            core.store,
            core.bus,
            dirs,
            core.catalog,
            extensions=extensions,
            broker=broker,
            recorder=core.recorder,
            registry=sessions,
        )
        try:
            yield supervisor
        finally:
            engine.close()


@contextmanager
def _forwarding(dirs: Dirs) -> Iterator[None]:
    """The audit forwarder, where audit.toml asks for one: one per supervisor process, and
    of those only the one holding the log's forward lock sends (app/forward.py)."""
    config = load_config(dirs.config)
    if config is None:
        yield
        return
    forwarder = AuditForwarder(dirs.audit, config, Origin.here())
    forwarder.start()
    try:
        yield
    finally:
        forwarder.stop()


@contextmanager
def open_consenting_supervisor(
    dirs: Dirs, front_end: FrontEnd | None = None
) -> Iterator[tuple[Supervisor, ConsentBroker]]:
    """The supervisor and the broker its questions go through, for the desktop app: long
    running, so it must `await supervisor.aclose()` before it exits."""
    with open_supervisor(dirs, front_end, long_running=True) as supervisor:
        assert supervisor.broker is not None
        yield supervisor, supervisor.broker
