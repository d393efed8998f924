"""The sweep: what crashed supervisors left behind (containers, overlay volumes, views,
runtime folders, records of live sessions) is removed. Blocking: run it in a worker thread."""

from __future__ import annotations

import shutil
from collections.abc import Container

from app.container import LABEL_OWNER, LABEL_SESSION, LABEL_SUPERVISOR, agents_first
from app.paths import Dirs
from app.sessions.engine import Engine, session_containers
from app.sessions.registry import process_alive
from app.store import SessionState, StateStore
from app.view import SessionView


def sweep_orphans(
    engine: Engine, owner: str, store: StateStore, dirs: Dirs, running: Container[str]
) -> list[str]:
    """Removes what belongs to `owner`'s sessions whose supervisor is gone, sparing those
    `running` here; the ids of the sessions swept."""
    swept = []
    for container in agents_first(session_containers(engine, owner), lambda c: c.labels):
        session = container.labels.get(LABEL_SESSION, "")
        if session in running or process_alive(container.labels.get(LABEL_SUPERVISOR, "")):
            continue
        engine.remove(container.id)
        swept.append(session)
    for volume in engine.volumes([f"{LABEL_OWNER}={owner}"]):
        if volume.labels.get(LABEL_SESSION) in running:
            continue
        if not process_alive(volume.labels.get(LABEL_SUPERVISOR, "")):
            engine.remove_volumes([volume.id])
    for record in store.sessions(live_only=True):
        if record.id in running or process_alive(record.supervisor):
            continue
        SessionView(dirs.sessions / record.id / "view").discard()
        shutil.rmtree(dirs.runtime / record.id, ignore_errors=True)
        store.end_session(record.id, SessionState.SWEPT, None, "supervisor vanished")
        if record.id not in swept:
            swept.append(record.id)
    return swept
