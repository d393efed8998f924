"""Sessions after their end: each one's output kept on disk within a bound, what it did
counted from the event stream, what is left of it to review, and how much history is kept."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.commit import CommitLog
from app.errors import SessionError
from app.events import Event, EventKind
from app.grants import Lifetime, Mode
from app.paths import Dirs
from app.staging import SessionStaging
from app.store import SessionRecord, StateStore
from app.text import block

log = logging.getLogger(__name__)

OUTPUT_KEPT = 2 * 1024**2  # bytes of each session's output kept, its latest
KEPT_SESSIONS = 200
KEPT_DAYS = 30.0
MAX_HOSTS = 100  # hosts listed one by one per session; the rest are summed up as one

_FRAME = struct.Struct(">cI")  # stream ("o" or "e"), payload length
_STREAMS = {"stdout": b"o", "stderr": b"e"}
_NAMES = {v: k for k, v in _STREAMS.items()}
_SEGMENTS = ("output.0", "output.1")  # the older half, then the one being written
_CUT = "cut"  # bytes of output dropped from the start, as decimal text


@dataclass(frozen=True, slots=True)
class HistoryBounds:
    """How much is kept of ended sessions: the latest `sessions`, none older than `days`,
    and of each one the last `output` bytes of what it printed."""

    sessions: int = KEPT_SESSIONS
    days: float = KEPT_DAYS
    output: int = OUTPUT_KEPT

    def __post_init__(self) -> None:
        if self.sessions < 1 or self.days <= 0 or self.output < 1024:
            raise ValueError(
                "history must keep at least 1 session, for more than 0 days, "
                "and at least 1 KiB of each one's output"
            )


# output


class OutputLog:
    """One session's output on disk, its last `limit` bytes: two segment files of half the
    limit each, the older dropped whole when the newer is full (no file is ever rewritten),
    and the count of bytes dropped kept beside them. Written from the output pump's
    reading thread (never on the loop); a failure to write is logged once and the rest of
    the output is still shown live, just not kept."""

    def __init__(self, directory: Path, limit: int = OUTPUT_KEPT) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self._segment = max(limit // 2, 512)
        self._lock = threading.Lock()
        self._cut = 0
        self._older = 0  # payload bytes in the older segment
        self._current = 0  # payload bytes in the segment being written
        self._file: Any = open(directory / _SEGMENTS[1], "ab")  # noqa: SIM115 - closed in close()
        self._failed = False

    def write(self, stream: str, data: bytes) -> None:
        with self._lock:
            if self._failed or self._file is None or not data:
                return
            if len(data) > self._segment:  # one piece larger than a half: its end is kept
                self._cut += len(data) - self._segment
                data = data[-self._segment :]
            try:
                if self._current and self._current + len(data) > self._segment:
                    self._rotate()
                self._file.write(_FRAME.pack(_STREAMS.get(stream, b"o"), len(data)) + data)
                self._file.flush()  # readable by the app's view while the session runs
            except OSError as e:
                self._failed = True
                log.warning("the output of %s is no longer kept: %s", self.directory.name, e)
                return
            self._current += len(data)

    def _rotate(self) -> None:
        self._file.close()
        self._cut += self._older
        _write_cut(self.directory, self._cut)
        os.replace(self.directory / _SEGMENTS[1], self.directory / _SEGMENTS[0])
        self._older, self._current = self._current, 0
        self._file = open(self.directory / _SEGMENTS[1], "ab")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.close()
                _write_cut(self.directory, self._cut)
            except OSError as e:
                log.warning("the output of %s: %s", self.directory.name, e)
            self._file = None


def _write_cut(directory: Path, cut: int) -> None:
    temp = directory / f".{_CUT}.tmp"
    temp.write_text(str(cut))
    os.replace(temp, directory / _CUT)


@dataclass(frozen=True, slots=True)
class KeptOutput:
    """What is kept of a session's output: its pieces in order, and how many bytes before
    them were dropped to stay within the bound."""

    pieces: tuple[tuple[str, bytes], ...] = ()
    cut: int = 0

    @property
    def kept(self) -> int:
        return sum(len(data) for _, data in self.pieces)

    def cut_line(self) -> str:
        if not self.cut:
            return ""
        return (
            f"[… the first {human_size(self.cut)} of its output are not kept: only the "
            f"last {human_size(self.kept)} are …]"
        )

    def text(self) -> str:
        """The output as plain text to show: escape sequences removed, other controls made
        visible, a line rewritten with carriage returns shown as it ended; with the line
        saying what was cut first."""
        body = plain_text(b"".join(data for _, data in self.pieces))
        head = self.cut_line()
        return f"{head}\n{body}" if head else body


def read_output(directory: Path) -> KeptOutput:
    """The kept output in `directory` (nothing if there is none). A piece cut short by a
    crash mid-write ends the reading."""
    pieces: list[tuple[str, bytes]] = []
    for name in _SEGMENTS:
        try:
            data = (directory / name).read_bytes()
        except FileNotFoundError:
            continue
        at = 0
        while at + _FRAME.size <= len(data):
            stream, length = _FRAME.unpack_from(data, at)
            at += _FRAME.size
            if at + length > len(data):
                break
            pieces.append((_NAMES.get(stream, "stdout"), data[at : at + length]))
            at += length
    try:
        cut = int((directory / _CUT).read_text() or 0)
    except (FileNotFoundError, ValueError):
        cut = 0
    return KeptOutput(tuple(pieces), cut)


_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI
    rb"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC strings
    rb"|\x1b[ -/]*[0-~]?"  # other escapes
)


def plain_text(data: bytes) -> str:
    """An agent's terminal output as text a widget can show: sequences dropped, what is
    left of a line after its last carriage return, other controls as visible escapes."""
    text = _ESCAPES.sub(b"", data).decode("utf-8", "replace")
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return block("\n".join(lines))


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# what a session did, counted from its events


@dataclass(frozen=True, slots=True)
class HostUse:
    host: str
    requests: int = 0
    refused: int = 0
    up: int = 0
    down: int = 0


@dataclass(frozen=True, slots=True)
class SessionActivity:
    """What a session did that its record does not say: its network requests (how many,
    refused, bytes each way, by host), its file reads and writes, the questions it asked."""

    requests: int = 0
    refused: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    hosts: tuple[HostUse, ...] = ()
    reads: int = 0
    writes: int = 0
    questions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "hosts": [[h.host, h.requests, h.refused, h.up, h.down] for h in self.hosts],
            "reads": self.reads,
            "writes": self.writes,
            "questions": self.questions,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionActivity:
        return cls(
            requests=int(data.get("requests", 0)),
            refused=int(data.get("refused", 0)),
            bytes_up=int(data.get("bytes_up", 0)),
            bytes_down=int(data.get("bytes_down", 0)),
            hosts=tuple(
                HostUse(str(h), int(r), int(f), int(u), int(d))
                for h, r, f, u, d in data.get("hosts", ())
            ),
            reads=int(data.get("reads", 0)),
            writes=int(data.get("writes", 0)),
            questions=int(data.get("questions", 0)),
        )


_WRITES = frozenset(
    {EventKind.FILE_WRITTEN, EventKind.FILE_CREATED, EventKind.FILE_DELETED, EventKind.FILE_MOVED}
)
_NET = frozenset({EventKind.NET_REQUEST, EventKind.NET_TUNNEL, EventKind.NET_REFUSED})
OTHER_HOSTS = "(other hosts)"


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, list[int]] = field(default_factory=dict)  # requests, refused, up, down

    def add(self, event: Event) -> None:
        kind = event.kind
        if kind in _NET:
            up, down = (
                _count(event.details.get("bytes_up")),
                _count(event.details.get("bytes_down")),
            )
            refused = kind is EventKind.NET_REFUSED
            self._bump("requests", 1)
            self._bump("refused", int(refused))
            self._bump("bytes_up", up)
            self._bump("bytes_down", down)
            host = str(event.details.get("host") or event.subject)[:253]
            if host not in self.hosts and len(self.hosts) >= MAX_HOSTS:
                host = OTHER_HOSTS
            use = self.hosts.setdefault(host, [0, 0, 0, 0])
            use[0] += 1
            use[1] += int(refused)
            use[2] += up
            use[3] += down
        elif kind is EventKind.FILE_READ:
            self._bump("reads", 1)
        elif kind in _WRITES:
            self._bump("writes", 1)
        elif kind is EventKind.REQUEST_ASKED:
            self._bump("questions", 1)

    def _bump(self, name: str, value: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def activity(self) -> SessionActivity:
        hosts = sorted(self.hosts.items(), key=lambda item: (-item[1][0], item[0]))
        count = self.counts.get
        return SessionActivity(
            requests=count("requests", 0),
            refused=count("refused", 0),
            bytes_up=count("bytes_up", 0),
            bytes_down=count("bytes_down", 0),
            reads=count("reads", 0),
            writes=count("writes", 0),
            questions=count("questions", 0),
            hosts=tuple(HostUse(host, *use) for host, use in hosts),
        )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ActivityTally:
    """A sink on the event bus: what each session of this process does, counted as it
    happens (`activity`), until the session ends and its count is stored (`take`)."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    def __call__(self, event: Event) -> None:
        if event.session is None:
            return
        if (
            event.kind in _NET
            or event.kind in _WRITES
            or event.kind
            in (
                EventKind.FILE_READ,
                EventKind.REQUEST_ASKED,
            )
        ):
            self._tallies.setdefault(event.session, _Tally()).add(event)

    def activity(self, session: str) -> SessionActivity:
        tally = self._tallies.get(session)
        return tally.activity() if tally is not None else SessionActivity()

    def take(self, session: str) -> SessionActivity:
        tally = self._tallies.pop(session, None)
        return tally.activity() if tally is not None else SessionActivity()


# how much is kept


def to_forget(
    ended: Sequence[SessionRecord], now: float, bounds: HistoryBounds, waiting: Container[str]
) -> list[str]:
    """Which ended sessions the history lets go: those past the `bounds.sessions` latest or
    older than `bounds.days`, but never one whose changes still wait for review
    (`waiting`): that would hide the way to them."""
    oldest = now - bounds.days * 86400
    latest_first = sorted(ended, key=lambda r: r.ended_at or r.started_at, reverse=True)
    return [
        r.id
        for i, r in enumerate(latest_first)
        if not r.live
        and (i >= bounds.sessions or (r.ended_at or r.started_at) < oldest)
        and r.id not in waiting
    ]


# what the history shows of one session


@dataclass(frozen=True, slots=True)
class GrantUse:
    """A file or folder a session was given (at launch, or picked through the portal)."""

    path: Path
    mode: Mode
    inside: str  # where the agent saw it
    lifetime: Lifetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class SessionSummary:
    record: SessionRecord
    activity: SessionActivity
    grants: tuple[GrantUse, ...]
    commits: int  # commits of its changes (not counting undos)
    committed: int  # files those commits changed on the host
    waiting: int  # staged changes still open for review
    output_kept: int
    output_cut: int

    @property
    def duration(self) -> float | None:
        if self.record.ended_at is None:
            return None
        return max(0.0, self.record.ended_at - self.record.started_at)


class History:
    """The sessions' history over the state store and the state directory. Blocking (the
    store, file reads): from a loop, call it through `asyncio.to_thread`."""

    BOUNDS = "history.bounds"

    def __init__(self, store: StateStore, dirs: Dirs) -> None:
        self.store = store
        self.dirs = dirs

    def bounds(self) -> HistoryBounds:
        text = self.store.preference(self.BOUNDS)
        if not text:
            return HistoryBounds()
        try:
            data = json.loads(text)
            return HistoryBounds(int(data["sessions"]), float(data["days"]), int(data["output"]))
        except (ValueError, KeyError, TypeError):
            log.warning("the history's bounds in %s are unreadable: defaults used", self.store.path)
            return HistoryBounds()

    def set_bounds(self, bounds: HistoryBounds) -> None:
        self.store.set_preference(
            self.BOUNDS,
            json.dumps({"sessions": bounds.sessions, "days": bounds.days, "output": bounds.output}),
        )

    def output_dir(self, session: str) -> Path:
        _check_id(session)
        return self.dirs.history / session

    def output(self, session: str) -> KeptOutput:
        return read_output(self.output_dir(session))

    def record_activity(self, session: str, activity: SessionActivity) -> None:
        self.store.set_activity(session, json.dumps(activity.to_json()))

    def activity(self, session: str) -> SessionActivity:
        text = self.store.activity(session)
        return SessionActivity.from_json(json.loads(text)) if text else SessionActivity()

    def waiting(self, session: str) -> int:
        """How many staged changes of the session are open for review."""
        _check_id(session)
        root = self.dirs.sessions / session / "staging"
        if not root.is_dir():
            return 0
        try:
            return len(SessionStaging(root, session).changeset().changes)
        except (OSError, SessionError) as e:
            log.warning("the staged changes of %s cannot be listed: %s", session, e)
            return 0

    def summary(self, session: str, live: SessionActivity | None = None) -> SessionSummary:
        """One session as the history shows it; `live`: the running count of a session
        that has not ended yet (the stored one is written at its end)."""
        record = self.store.session(session)
        if record is None:
            raise SessionError(f"no session {session!r} (see `airlock sessions --all`)")
        grants = tuple(
            GrantUse(
                g.path,
                g.mode,
                self.store.grant_location(session, g.id) or str(g.path),
                g.lifetime,
                g.revoked_at is not None,
            )
            for g in self.store.session_grants(session)
        )
        commits = [
            r
            for r in CommitLog(self.dirs.state / "commits").records()
            if r.session == session and r.undo_of is None and r.undone_by is None
        ]
        output = self.output(session)
        return SessionSummary(
            record=record,
            activity=live if live is not None else self.activity(session),
            grants=grants,
            commits=len(commits),
            committed=len({op.target for r in commits for op in r.operations}),
            waiting=self.waiting(session),
            output_kept=output.kept,
            output_cut=output.cut,
        )

    def forget(self, session: str) -> None:
        """Forgets an ended session: its record, counts and output. Refused while it runs
        or while its changes wait for review."""
        record = self.store.session(session)
        if record is None:
            raise SessionError(f"no session {session!r} (see `airlock sessions --all`)")
        if record.live:
            raise SessionError(f"session {session} is still running: stop it first")
        if waiting := self.waiting(session):
            raise SessionError(
                f"session {session} has {waiting} change(s) waiting for review: commit or "
                f"discard them first (`airlock changes {session}`)"
            )
        self._drop([session])

    def prune(self, now: float | None = None) -> list[str]:
        """Lets go of the sessions past the bounds; the ids forgotten."""
        bounds = self.bounds()
        ended = [r for r in self.store.sessions() if not r.live]
        now = time.time() if now is None else now
        candidates = to_forget(ended, now, bounds, ())
        waiting = {s for s in candidates if self.waiting(s)}
        gone = [s for s in candidates if s not in waiting]
        self._drop(gone)
        return gone

    def _drop(self, sessions: Iterable[str]) -> None:
        sessions = list(sessions)
        if not sessions:
            return
        self.store.forget_sessions(sessions)
        for session in sessions:
            shutil.rmtree(self.output_dir(session), ignore_errors=True)
            # What review left of it (an emptied, sealed staging area, its listings); an
            # overlay's work directory the kernel left as root's stays (nothing to do).
            shutil.rmtree(self.dirs.sessions / session, ignore_errors=True)


def _check_id(session: str) -> None:
    if not session or "/" in session or session.startswith("."):
        raise SessionError(f"{session!r} is not a session id")
