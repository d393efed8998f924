"""Airlock's durable state (sessions and grants) in one SQLite file in the XDG state dir.

Several `airlock` processes (a running session, `airlock revoke`, `airlock sessions`) share
the file, so it runs in WAL mode with a busy timeout, and every write is one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from app.errors import AirlockError
from app.grants import Access, Grant, Lifetime, Mode, NetworkGrant

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    image TEXT NOT NULL,
    container_id TEXT,
    supervisor TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    reason TEXT,
    sandbox TEXT  -- the sandbox check's outcome: "verified (N checks)" or "refused: …"
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    lifetime TEXT NOT NULL,
    session TEXT,
    profile TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS network_grants (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    access TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    lifetime TEXT NOT NULL,
    session TEXT,
    profile TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS session_activity (
    session TEXT PRIMARY KEY,
    activity TEXT NOT NULL  -- JSON: what it did, counted (app/history.py)
);
CREATE TABLE IF NOT EXISTS preferences (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_grants (
    session TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    location TEXT,  -- where the grant shows inside the container, when not at its own path
    PRIMARY KEY (session, grant_id)
);
"""


class SessionState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    SWEPT = "swept"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    profile: str
    image: str
    container_id: str | None
    supervisor: str  # "pid:start-time" of the process that supervises it
    state: SessionState
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    sandbox: str | None = None  # the sandbox check's outcome, once it ran

    @property
    def live(self) -> bool:
        return self.state in (SessionState.STARTING, SessionState.RUNNING)


# How long an operation waits for other `airlock` processes to let go of the file. SQLite's
# own busy timeout covers most waits; a few (a WAL file being reset as another process
# closes the last connection) give up at once, so those are retried here as well.
LOCK_WAIT_SECONDS = 60.0


# SQLite's own busy timeout, after which an operation is retried here (LOCK_WAIT_SECONDS).
BUSY_TIMEOUT_SECONDS = 10.0


class StateStore:
    def __init__(self, path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        # Used from the loop thread and from worker threads (sweeps run in to_thread);
        # the lock makes each method atomic within this process.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )

        def prepare() -> None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
            if "sandbox" not in columns:  # a file from before the sandbox check
                try:
                    self._db.execute("ALTER TABLE sessions ADD COLUMN sandbox TEXT")
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):  # another process just added it
                        raise

        self._patiently(prepare)

    def _patiently(self, operation: Callable[[], _T]) -> _T:
        """Runs `operation` (which must be safe to run again after it failed to get the
        file's lock) until the lock is had, for at most LOCK_WAIT_SECONDS."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise AirlockError(
                        f"{self.path} stayed locked by another airlock process for "
                        f"{LOCK_WAIT_SECONDS:.0f} s; is one stuck? (`airlock sessions` "
                        "lists the running ones)"
                    ) from e
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._patiently(lambda: self._db.execute("BEGIN IMMEDIATE"))
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._patiently(lambda: self._db.execute(sql, parameters).fetchall())

    # sessions

    def add_session(self, record: SessionRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, profile, image, container_id, supervisor, state, "
                "started_at, ended_at, exit_code, reason, sandbox) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.id,
                    record.profile,
                    record.image,
                    record.container_id,
                    record.supervisor,
                    record.state,
                    record.started_at,
                    record.ended_at,
                    record.exit_code,
                    record.reason,
                    record.sandbox,
                ),
            )

    def set_session_running(
        self, session: str, container_id: str, sandbox: str | None = None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET state=?, container_id=?, sandbox=? WHERE id=?",
                (SessionState.RUNNING, container_id, sandbox, session),
            )

    def set_sandbox(self, session: str, sandbox: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE sessions SET sandbox=? WHERE id=?", (sandbox, session))

    def end_session(
        self, session: str, state: SessionState, exit_code: int | None, reason: str | None
    ) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET state=?, ended_at=?, exit_code=?, reason=? WHERE id=?",
                (state, now, exit_code, reason, session),
            )
            # Once and session grants die with their session.
            db.execute(
                "UPDATE grants SET revoked_at=? WHERE session=? AND revoked_at IS NULL "
                "AND lifetime IN (?, ?)",
                (now, session, Lifetime.ONCE, Lifetime.SESSION),
            )
            # A network answer that is not the profile's was the session's only.
            db.execute(
                "UPDATE network_grants SET revoked_at=? WHERE session=? AND revoked_at IS NULL",
                (now, session),
            )

    def session(self, session: str) -> SessionRecord | None:
        rows = self._query("SELECT * FROM sessions WHERE id=?", (session,))
        return _session(rows[0]) if rows else None

    def sessions(self, live_only: bool = False) -> list[SessionRecord]:
        query = "SELECT * FROM sessions"
        if live_only:
            query += f" WHERE state IN ('{SessionState.STARTING}', '{SessionState.RUNNING}')"
        return [_session(row) for row in self._query(query + " ORDER BY started_at")]

    def forget_sessions(self, sessions: Iterable[str]) -> None:
        """Removes ended sessions from the history: their records, counts, and the grants
        that were theirs alone and no longer in force."""
        now = time.time()
        with self._transaction() as db:
            for session in sessions:
                db.execute(
                    "DELETE FROM sessions WHERE id=? AND state NOT IN (?, ?)",
                    (session, SessionState.STARTING, SessionState.RUNNING),
                )
                db.execute("DELETE FROM session_activity WHERE session=?", (session,))
                db.execute("DELETE FROM session_grants WHERE session=?", (session,))
                db.execute(
                    "DELETE FROM grants WHERE session=? AND (revoked_at IS NOT NULL "
                    "OR (expires_at IS NOT NULL AND expires_at < ?))",
                    (session, now),
                )
                db.execute(
                    "DELETE FROM network_grants WHERE session=? AND revoked_at IS NOT NULL",
                    (session,),
                )

    def set_activity(self, session: str, activity: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO session_activity VALUES (?, ?)", (session, activity))

    def activity(self, session: str) -> str | None:
        rows = self._query("SELECT activity FROM session_activity WHERE session=?", (session,))
        return str(rows[0][0]) if rows else None

    # preferences shared by every front end (the history's bounds)

    def preference(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM preferences WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_preference(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO preferences VALUES (?, ?)", (key, value))

    # grants

    def add_grants(
        self, grants: Iterable[Grant], session: str | None = None, location: str | None = None
    ) -> None:
        with self._transaction() as db:
            for grant in grants:
                db.execute(
                    "INSERT INTO grants VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        grant.id,
                        str(grant.path),
                        grant.mode,
                        grant.lifetime,
                        grant.session,
                        grant.profile,
                        grant.created_at,
                        grant.expires_at,
                        grant.revoked_at,
                    ),
                )
                if session is not None:
                    db.execute(
                        "INSERT INTO session_grants VALUES (?,?,?)", (session, grant.id, location)
                    )

    def link_grants(self, session: str, grants: Iterable[Grant]) -> None:
        with self._transaction() as db:
            for grant in grants:
                db.execute(
                    "INSERT OR IGNORE INTO session_grants VALUES (?,?,NULL)", (session, grant.id)
                )

    def grant(self, grant_id: str) -> Grant | None:
        rows = self._query("SELECT * FROM grants WHERE id=?", (grant_id,))
        return _grant(rows[0]) if rows else None

    def grants(self, active_at: float | None = None) -> list[Grant]:
        rows = self._query("SELECT * FROM grants ORDER BY created_at")
        grants = [_grant(row) for row in rows]
        return [g for g in grants if active_at is None or g.active(active_at)]

    def profile_grants(self, profile: str, now: float) -> list[Grant]:
        rows = self._query("SELECT * FROM grants WHERE profile=? AND session IS NULL", (profile,))
        return [g for g in map(_grant, rows) if g.active(now)]

    def session_grants(self, session: str, now: float | None = None) -> list[Grant]:
        rows = self._query(
            "SELECT g.* FROM grants g JOIN session_grants s ON s.grant_id = g.id "
            "WHERE s.session=? ORDER BY g.created_at",
            (session,),
        )
        return [g for g in map(_grant, rows) if now is None or g.active(now)]

    def grant_location(self, session: str, grant_id: str) -> str | None:
        rows = self._query(
            "SELECT location FROM session_grants WHERE session=? AND grant_id=?",
            (session, grant_id),
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def sessions_using(self, grant_id: str) -> list[str]:
        rows = self._query("SELECT session FROM session_grants WHERE grant_id=?", (grant_id,))
        return [str(row[0]) for row in rows]

    def revoke(self, grant_ids: Iterable[str]) -> None:
        """Revokes file and network grants alike."""
        now = time.time()
        with self._transaction() as db:
            for grant_id in grant_ids:
                db.execute(
                    "UPDATE grants SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                    (now, grant_id),
                )
                db.execute(
                    "UPDATE network_grants SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                    (now, grant_id),
                )

    def unrevoke(self, grant_ids: Iterable[str]) -> None:
        """Puts revoked grants (file or network) back in force: the undo of a revocation."""
        with self._transaction() as db:
            for grant_id in grant_ids:
                db.execute("UPDATE grants SET revoked_at=NULL WHERE id=?", (grant_id,))
                db.execute("UPDATE network_grants SET revoked_at=NULL WHERE id=?", (grant_id,))

    # network grants: remembered answers to network and upload questions

    def add_network_grant(self, grant: NetworkGrant) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO network_grants VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    grant.id,
                    grant.host,
                    grant.port,
                    grant.access,
                    int(grant.allowed),
                    grant.lifetime,
                    grant.session,
                    grant.profile,
                    grant.created_at,
                    grant.expires_at,
                    grant.revoked_at,
                ),
            )

    def network_grant(self, grant_id: str) -> NetworkGrant | None:
        rows = self._query("SELECT * FROM network_grants WHERE id=?", (grant_id,))
        return _network_grant(rows[0]) if rows else None

    def network_grants(self, active_at: float | None = None) -> list[NetworkGrant]:
        """All of them, or (`active_at`) those neither revoked nor expired then."""
        query = "SELECT * FROM network_grants"
        if active_at is not None:
            query += " WHERE revoked_at IS NULL"
        grants = [_network_grant(row) for row in self._query(query + " ORDER BY created_at")]
        return [g for g in grants if active_at is None or g.active(active_at)]


def _session(row: tuple[object, ...]) -> SessionRecord:
    (
        id_,
        profile,
        image,
        container_id,
        supervisor,
        state,
        started_at,
        ended_at,
        exit_code,
        reason,
        sandbox,
    ) = row
    return SessionRecord(
        id=str(id_),
        profile=str(profile),
        image=str(image),
        container_id=None if container_id is None else str(container_id),
        supervisor=str(supervisor),
        state=SessionState(str(state)),
        started_at=float(str(started_at)),
        ended_at=None if ended_at is None else float(str(ended_at)),
        exit_code=None if exit_code is None else int(str(exit_code)),
        reason=None if reason is None else str(reason),
        sandbox=None if sandbox is None else str(sandbox),
    )


def _grant(row: tuple[object, ...]) -> Grant:
    id_, path, mode, lifetime, session, profile, created_at, expires_at, revoked_at = row
    return Grant(
        id=str(id_),
        path=Path(str(path)),
        mode=Mode(str(mode)),
        lifetime=Lifetime(str(lifetime)),
        session=None if session is None else str(session),
        profile=None if profile is None else str(profile),
        created_at=float(str(created_at)),
        expires_at=None if expires_at is None else float(str(expires_at)),
        revoked_at=None if revoked_at is None else float(str(revoked_at)),
    )


def _network_grant(row: tuple[object, ...]) -> NetworkGrant:
    (
        id_,
        host,
        port,
        access,
        allowed,
        lifetime,
        session,
        profile,
        created_at,
        expires_at,
        revoked_at,
    ) = row
    return NetworkGrant(
        id=str(id_),
        host=str(host),
        port=int(str(port)),
        access=Access(str(access)),
        allowed=bool(allowed),
        lifetime=Lifetime(str(lifetime)),
        session=None if session is None else str(session),
        profile=None if profile is None else str(profile),
        created_at=float(str(created_at)),
        expires_at=None if expires_at is None else float(str(expires_at)),
        revoked_at=None if revoked_at is None else float(str(revoked_at)),
    )
