"""Table models of the main window: sessions, the live activity feed (and its filter), network
totals per host, grants and audit records. Plain data in, Qt roles out; no I/O here."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QBrush, QGuiApplication

from app.audit import AuditRecord
from app.events import Event, EventKind
from app.grants import AnyGrant, NetworkGrant
from app.store import SessionRecord
from app.text import printable
from ui.qt.agents import AgentNames
from ui.qt.theme import Hue, tone

Index = QModelIndex | QPersistentModelIndex
DISPLAY = Qt.ItemDataRole.DisplayRole
MAX_SUBJECT = 300


def clock(timestamp: float | None, with_date: bool = False) -> str:
    if not timestamp:
        return ""
    return time.strftime(
        "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(timestamp)
    )


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


class Tones:
    """Hues as brushes readable on the current palette, made again when the palette changes."""

    def __init__(self) -> None:
        self._key = 0
        self._brushes: dict[Hue, QBrush] = {}

    def brush(self, hue: Hue) -> QBrush:
        palette = QGuiApplication.palette()
        if self._key != palette.cacheKey():
            self._key, self._brushes = palette.cacheKey(), {}
        if hue not in self._brushes:
            self._brushes[hue] = QBrush(tone(palette, hue))
        return self._brushes[hue]


class _Table(QAbstractTableModel):
    """What every table here shares: fixed column headers over a sized list of rows."""

    headers: tuple[str, ...] = ()

    def _length(self) -> int:
        raise NotImplementedError

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self._length()

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.headers)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = DISPLAY) -> Any:
        if orientation is Qt.Orientation.Horizontal and role == DISPLAY:
            return self.headers[section]
        return None


class RecordTable(_Table):
    """A table of immutable rows replaced as a whole (sessions, grants, audit records)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.rows: list[Any] = []

    def _length(self) -> int:
        return len(self.rows)

    def replace(self, rows: Iterable[Any]) -> None:
        rows = list(rows)
        if rows == self.rows:
            return
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def cell(self, row: Any, column: int) -> Any:
        raise NotImplementedError

    def data(self, index: Index, role: int = DISPLAY) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        if role == DISPLAY:
            return self.cell(row, index.column())
        if role == Qt.ItemDataRole.UserRole:
            return row
        if role == Qt.ItemDataRole.ToolTipRole:
            value = self.cell(row, index.column())
            return value if isinstance(value, str) and len(value) > 40 else None
        return None


class SessionsModel(RecordTable):
    headers = ("Agent", "Session", "State", "Started", "Image", "Sandbox")
    SANDBOX = 5
    # Sessions whose file activity overflowed the watch again and again (activity.unwatched).
    unwatched: frozenset[str] = frozenset()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tones = Tones()

    def set_unwatched(self, sessions: frozenset[str]) -> None:
        if sessions != self.unwatched:
            self.beginResetModel()
            self.unwatched = sessions
            self.endResetModel()

    def cell(self, row: SessionRecord, column: int) -> Any:
        state = str(row.state) + (" · partly unwatched" if row.id in self.unwatched else "")
        return (
            row.profile,
            row.id,
            state,
            clock(row.started_at),
            image_text(row.image),
            sandbox_text(row),
        )[column]

    def data(self, index: Index, role: int = DISPLAY) -> Any:
        if (
            role == Qt.ItemDataRole.ForegroundRole
            and index.isValid()
            and index.column() == self.SANDBOX
        ):
            sandbox = self.rows[index.row()].sandbox or ""
            if sandbox.startswith("verified"):
                return self.tones.brush(Hue.SUCCESS)
            if sandbox:
                return self.tones.brush(Hue.DANGER)
            return None
        if role == Qt.ItemDataRole.ToolTipRole and index.isValid():
            row = self.rows[index.row()]
            if index.column() == self.SANDBOX:
                return sandbox_label(row)
            if index.column() == 4:
                return row.image
        return super().data(index, role)


def image_text(image: str) -> str:
    """An image by its name ("airlock-agent:claude-code"), a bare digest by its first 12."""
    return image[len("sha256:") : len("sha256:") + 12] if image.startswith("sha256:") else image


def sandbox_text(row: SessionRecord) -> str:
    """The self-check's outcome under the "Sandbox" heading: "verified (52 checks)",
    "refused: …", "checking…"."""
    if row.sandbox is None:
        return "checking…" if row.live else "not checked"
    return row.sandbox


def sandbox_label(row: SessionRecord) -> str:
    """The self-check's outcome, as the user reads it where no heading says "sandbox" (the
    tray): "sandbox verified (N checks)", or why the session was refused."""
    if row.sandbox is None:
        return "checking…" if row.live else "not checked"
    return f"sandbox {row.sandbox}"


class GrantsModel(RecordTable):
    headers = ("File, folder or host", "Access", "Lifetime", "For", "Until", "Grant", "")
    REVOKE_COLUMN = 6
    names: AgentNames | None = None  # the window's: sessions shown as their agents

    def cell(self, row: AnyGrant, column: int) -> Any:
        if isinstance(row, NetworkGrant):  # a remembered network or upload answer
            # An upload answer is about uploads past the profile's threshold: the large ones.
            access = {"connect": "connect", "upload": "large uploads"}.get(
                str(row.access), str(row.access)
            ) + ("" if row.allowed else ": refused")
        else:
            access = "read and write" if str(row.mode) == "rw" else "read"
        if row.session:
            who = self.names.name(row.session) if self.names else f"session {row.session}"
        else:
            who = f"{row.profile} (every session)"
        return (
            str(row.path),
            access,
            str(row.lifetime),
            who,
            clock(row.expires_at, True) if row.expires_at else "",
            row.id,
            "",
        )[column]


class AuditModel(RecordTable):
    headers = ("#", "Time", "Agent", "Kind", "Subject", "Hash")
    names: AgentNames | None = None

    def cell(self, row: AuditRecord, column: int) -> Any:
        return (
            row.seq,
            clock(row.time, True),
            (self.names.name(row.session) if self.names else row.session) or "",
            row.kind,
            printable(row.subject)[:MAX_SUBJECT],
            row.hash[:16],
        )[column]


KIND_COLOURS = {
    "request": Hue.WARNING,
    "grant": Hue.INFO,
    "session": Hue.SUCCESS,
    "net": Hue.PURPLE,
    "changes": Hue.TEAL,
    "stream": Hue.DANGER,
}


def summary(event: Event) -> str:
    """One line on an event, for the feed's last column."""
    details = event.details
    kind = event.kind
    if kind is EventKind.SESSION_OUTPUT:
        return str(details.get("text", ""))
    if kind is EventKind.REQUEST_ANSWERED:
        return f"{details.get('verdict')} by {details.get('by')} ({details.get('lifetime')})"
    if kind is EventKind.REQUEST_ASKED:
        return f"{details.get('asks')}, times out in {details.get('timeout', 0):.0f} s"
    if kind is EventKind.NET_CREDENTIAL:
        return (
            f"🔑 route {details.get('route', '')} added its key "
            f"({details.get('route_header', '')}): {details.get('method', '')} "
            f"{details.get('path', '')} → {details.get('status', '')}"
        )
    if kind in (EventKind.NET_REQUEST, EventKind.NET_TUNNEL, EventKind.NET_REFUSED):
        # The path comes redacted (query values are `…`); HTTPS says whether it was seen.
        path = details.get("path")
        inspection = details.get("inspection")
        said = [
            str(details.get("method", "")),
            path if isinstance(path, str) else "",
            f"({inspection})" if inspection in ("inspected", "opaque") else "",
        ]
        decision = {"allow": "allowed", "deny": "denied"}.get(
            str(details.get("decision", "")), str(details.get("decision", ""))
        )
        reason = str(details.get("reason", "") or "")
        return (
            f"{' '.join(w for w in said if w)}: {decision}{f', {reason}' if reason else ''} · "
            f"↑{human_bytes(_int(details.get('bytes_up')))} "
            f"↓{human_bytes(_int(details.get('bytes_down')))}"
        )
    if kind is EventKind.STREAM_DROPPED:
        return f"{details.get('count')} events not shown (the view fell behind)"
    if kind is EventKind.SESSION_EXITED:
        return str(details.get("reason", ""))
    if kind is EventKind.SANDBOX_VERIFIED and details.get("weaker"):
        return f"sandbox {details.get('warning')} ({details.get('checks')} checks)"
    if kind is EventKind.SANDBOX_VERIFIED:
        note = f"; {details['note']}" if details.get("note") else ""  # what gVisor changes
        return f"sandbox verified ({details.get('checks')} checks){note}"
    if kind is EventKind.SANDBOX_REFUSED:
        return (
            f"refused: {details.get('check')}: expected {details.get('expected')}, "
            f"found {details.get('found')}"
        )
    parts = [f"{k}={v}" for k, v in details.items() if isinstance(v, str | int | float)]
    return " ".join(parts)[:200]


class ActivityModel(_Table):
    """The live feed: the newest `capacity` events, appended in batches."""

    headers = ("Time", "Agent", "Kind", "Subject", "Details")
    names: AgentNames | None = None

    def __init__(self, capacity: int = 20_000, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.capacity = capacity
        self.events: deque[Event] = deque()
        self.tones = Tones()

    def _length(self) -> int:
        return len(self.events)

    def append(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        batch = batch[-self.capacity :]
        overflow = len(self.events) + len(batch) - self.capacity
        if overflow > 0:
            self.beginRemoveRows(QModelIndex(), 0, overflow - 1)
            for _ in range(overflow):
                self.events.popleft()
            self.endRemoveRows()
        first = len(self.events)
        self.beginInsertRows(QModelIndex(), first, first + len(batch) - 1)
        self.events.extend(batch)
        self.endInsertRows()

    def clear(self) -> None:
        self.beginResetModel()
        self.events.clear()
        self.endResetModel()

    def data(self, index: Index, role: int = DISPLAY) -> Any:
        if not index.isValid():
            return None
        event = self.events[index.row()]
        column = index.column()
        if role == DISPLAY:
            if column == 0:
                return (
                    time.strftime("%H:%M:%S", time.localtime(event.time))
                    + f".{int(event.time * 1000) % 1000:03d}"
                )
            if column == 1:
                return (self.names.name(event.session) if self.names else event.session) or ""
            if column == 2:
                return str(event.kind)
            if column == 3:
                return printable(event.subject)[:MAX_SUBJECT]
            return printable(summary(event))[:MAX_SUBJECT]
        if role == Qt.ItemDataRole.ForegroundRole and column == 2:
            hue = KIND_COLOURS.get(str(event.kind).partition(".")[0])
            return self.tones.brush(hue) if hue is not None else None
        if role == Qt.ItemDataRole.UserRole:
            return event
        return None


class ActivityFilter(QSortFilterProxyModel):
    """Filters the feed by session, kind (a kind or a group such as "file") and text."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = ""
        self.kind = ""
        self.text = ""

    def set_filter(
        self, session: str | None = None, kind: str | None = None, text: str | None = None
    ) -> None:
        self.beginFilterChange()
        if session is not None:
            self.session = session
        if kind is not None:
            self.kind = kind
        if text is not None:
            self.text = text.casefold()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row: int, parent: Index) -> bool:
        if not (self.session or self.kind or self.text):
            return True
        model = self.sourceModel()
        assert isinstance(model, ActivityModel)
        event = model.events[row]
        if self.session and event.session != self.session:
            return False
        if self.kind and not (
            event.kind == self.kind or str(event.kind).startswith(self.kind + ".")
        ):
            return False
        if self.text:
            haystack = f"{event.subject} {summary(event)} {event.kind}".casefold()
            if self.text not in haystack:
                return False
        return True


@dataclass(slots=True)
class HostTotals:
    host: str
    requests: int = 0
    refused: int = 0
    up: int = 0
    down: int = 0
    last: float = 0.0
    keyed: int = 0  # requests a route added its key to
    routes: tuple[str, ...] = ()

    @property
    def key_text(self) -> str:
        if not self.keyed:
            return ""
        return f"🔑 {self.keyed} ({', '.join(self.routes)})"


class NetworkModel(_Table):
    """Per-host totals of the proxy's events, and bytes per second for the plot. A host
    that a route's key went to is marked with how many requests carried it, and which
    routes."""

    headers = ("Host", "Requests", "Refused", "Sent", "Received", "Last seen", "Route key")
    HISTORY = 120  # seconds kept for the plot

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.hosts: list[HostTotals] = []
        self._by_host: dict[str, HostTotals] = {}
        self.per_second: deque[tuple[int, int, int]] = deque(maxlen=self.HISTORY)

    def _length(self) -> int:
        return len(self.hosts)

    def add(self, batch: Sequence[Event]) -> None:
        changed = False
        for event in batch:
            if event.kind not in (
                EventKind.NET_REQUEST,
                EventKind.NET_TUNNEL,
                EventKind.NET_REFUSED,
                EventKind.NET_CREDENTIAL,
            ):
                continue
            changed = True
            host = printable(event.subject)[:200]
            totals = self._by_host.get(host)
            if totals is None:
                self.beginInsertRows(QModelIndex(), len(self.hosts), len(self.hosts))
                totals = self._by_host[host] = HostTotals(host)
                self.hosts.append(totals)
                self.endInsertRows()
            if event.kind is EventKind.NET_CREDENTIAL:
                totals.keyed += 1  # the same request's net.request counted its bytes
                route = printable(str(event.details.get("route", "")))[:40]
                if route and route not in totals.routes:
                    totals.routes = (*totals.routes, route)
                continue
            up = _int(event.details.get("bytes_up"))
            down = _int(event.details.get("bytes_down"))
            totals.requests += 1
            totals.refused += event.kind is EventKind.NET_REFUSED
            totals.up += up
            totals.down += down
            totals.last = event.time
            self._count(int(event.time), up, down)
        if changed and self.hosts:
            self.dataChanged.emit(self.index(0, 1), self.index(len(self.hosts) - 1, 6))

    def _count(self, second: int, up: int, down: int) -> None:
        if self.per_second and self.per_second[-1][0] == second:
            _, old_up, old_down = self.per_second[-1]
            self.per_second[-1] = (second, old_up + up, old_down + down)
        elif not self.per_second or second > self.per_second[-1][0]:
            self.per_second.append((second, up, down))

    def data(self, index: Index, role: int = DISPLAY) -> Any:
        if not index.isValid():
            return None
        totals = self.hosts[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.UserRole:  # the sort key
            return (
                totals.host,
                totals.requests,
                totals.refused,
                totals.up,
                totals.down,
                totals.last,
                totals.keyed,
            )[column]
        if role == DISPLAY:
            return (
                totals.host,
                totals.requests,
                totals.refused,
                human_bytes(totals.up),
                human_bytes(totals.down),
                clock(totals.last),
                totals.key_text,
            )[column]
        if role == Qt.ItemDataRole.TextAlignmentRole and column:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
