"""The Network tab's per-request list: each exchange of the egress proxy with its time, agent,
request, bytes, decision and who made it (taken from the proxy's `net.*` events), filtered by
agent, with "Block this host" for a row and an undo for the block."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.events import Event, EventKind
from app.grants import NetworkGrant
from app.text import printable
from ui.qt.agents import AgentNames, agent_name
from ui.qt.models import Tones
from ui.qt.theme import Hue

Index = QModelIndex | QPersistentModelIndex
DISPLAY = Qt.ItemDataRole.DisplayRole
NET_KINDS = (EventKind.NET_REQUEST, EventKind.NET_TUNNEL, EventKind.NET_REFUSED)
CUT_RULES = ("grant-revoked", "host-blocked", "blocked-all")


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One exchange as the list shows it."""

    time: float
    session: str
    profile: str
    method: str
    host: str
    port: int
    path: str
    up: int
    down: int
    decision: str
    decided_by: str
    rule: str

    @property
    def request(self) -> str:
        if self.method == "CONNECT":
            return f"CONNECT {self.host}:{self.port}" if self.host else "CONNECT"
        # HTTPS's own port goes without saying: the host and path are what is read.
        port = f":{self.port}" if self.port and self.port != 443 else ""
        target = f"{self.host}{port}" if self.host else "-"
        return f"{self.method} {target}{self.path}".strip()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def decision_text(kind: EventKind, details: Mapping[str, Any]) -> str:
    """allowed · denied · held → allowed · asked → denied · cut … — what happened to it."""
    allowed = kind is not EventKind.NET_REFUSED and details.get("decision") == "allow"
    rule = details.get("rule")
    if kind is EventKind.NET_REFUSED and rule in CUT_RULES:
        return "cut"
    outcome = "allowed" if allowed else "denied"
    if details.get("held"):
        return f"held → {outcome}"
    if details.get("asked"):
        return f"asked → {outcome}"
    return outcome


def who_text(details: Mapping[str, Any]) -> str:
    """Who made the decision, in words: the profile's rule, the user, a stored grant (the
    user's block among them), the clock, or Airlock's own checks."""
    by = details.get("decided_by")
    rule = printable(str(details.get("rule") or ""))[:80]
    grants = details.get("grants")
    grant = printable(str(grants[-1]))[:20] if isinstance(grants, list) and grants else ""
    if not by:  # an event of an older proxy, or a refusal of the proxy's own
        by = "grant" if rule.startswith("grant:") else ""
        if rule.startswith(("allow[", "ask[", "route:", "not-listed")):
            by = "policy"
    if by == "policy":
        if rule == "not-listed":
            return "the profile (host not listed)"
        if rule.startswith("route:"):
            return f"the profile (its {rule[6:]} route)"
        return f"profile rule {rule}" if rule else "the profile"
    if by == "grant":
        if rule.startswith("grant:") and details.get("decision") != "allow":
            return f"your block ({grant or rule[6:]})"
        return f"stored grant {grant}".strip()
    if by == "user":
        return "you"
    if by == "timeout":
        return "timeout (no answer in time)"
    if by == "no answer":
        return "no answer (the question went away)"
    return f"Airlock ({rule})" if rule else "Airlock"


def request_row(event: Event) -> RequestRow | None:
    if event.kind not in NET_KINDS:
        return None
    details = event.details
    port = details.get("port")
    return RequestRow(
        time=event.time,
        session=event.session or "",
        profile=printable(str(details.get("profile") or ""))[:80],
        method=printable(str(details.get("method") or ""))[:40],
        host=printable(str(details.get("host") or ""))[:200],
        port=port if isinstance(port, int) and not isinstance(port, bool) else 0,
        path=printable(str(details.get("path") or ""))[:300],
        up=_int(details.get("bytes_up")),
        down=_int(details.get("bytes_down")),
        decision=decision_text(event.kind, details),
        decided_by=who_text(details),
        rule=printable(str(details.get("rule") or ""))[:80],
    )


def decision_hue(decision: str) -> Hue:
    """Allowed reads green, what a person had to weigh orange, refused and cut red."""
    if decision == "allowed":
        return Hue.SUCCESS
    if decision.endswith("allowed"):
        return Hue.WARNING
    return Hue.DANGER


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class RequestsModel(QAbstractTableModel):
    """The newest `capacity` exchanges, appended as their events come."""

    headers = ("Time", "Agent", "Request", "Sent", "Received", "Decision", "Decided by")

    def __init__(
        self, names: AgentNames, capacity: int = 5_000, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.names = names
        self.capacity = capacity
        self.rows: deque[RequestRow] = deque()
        self.tones = Tones()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.headers)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = DISPLAY) -> Any:
        if orientation is Qt.Orientation.Horizontal and role == DISPLAY:
            return self.headers[section]
        if role == Qt.ItemDataRole.TextAlignmentRole and section in (3, 4):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def add(self, batch: Sequence[Event]) -> None:
        rows = [row for event in batch if (row := request_row(event)) is not None]
        if not rows:
            return
        rows = rows[-self.capacity :]
        overflow = len(self.rows) + len(rows) - self.capacity
        if overflow > 0:
            self.beginRemoveRows(QModelIndex(), 0, overflow - 1)
            for _ in range(overflow):
                self.rows.popleft()
            self.endRemoveRows()
        first = len(self.rows)
        self.beginInsertRows(QModelIndex(), first, first + len(rows) - 1)
        self.rows.extend(rows)
        self.endInsertRows()

    def agent(self, row: RequestRow) -> str:
        return agent_name(row.profile or self.names.profile(row.session), row.session)

    def data(self, index: Index, role: int = DISPLAY) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        column = index.column()
        if role == DISPLAY:
            return (
                time.strftime("%H:%M:%S", time.localtime(row.time)),
                self.agent(row),
                row.request,
                human_bytes(row.up),
                human_bytes(row.down),
                row.decision,
                row.decided_by,
            )[column]
        if role == Qt.ItemDataRole.ForegroundRole and column == 5:
            return self.tones.brush(decision_hue(row.decision))
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (3, 4):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == 1:
                return f"session {row.session}"
            if column == 2:
                return row.request
            if column == 6:
                return row.decided_by
        if role == Qt.ItemDataRole.UserRole:
            return row
        return None


class RequestsFilter(QSortFilterProxyModel):
    """Rows of one agent: a profile (every session of it) or one session."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.profile = ""
        self.session = ""

    def set_agent(self, profile: str = "", session: str = "") -> None:
        self.beginFilterChange()
        self.profile, self.session = profile, session
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row: int, parent: Index) -> bool:
        model = self.sourceModel()
        assert isinstance(model, RequestsModel)
        shown = model.rows[row]
        if self.session:
            return shown.session == self.session
        if self.profile:
            return (shown.profile or model.names.profile(shown.session)) == self.profile
        return True


class NetworkRequestsPanel(QWidget):
    """The list, its agent filter, and the block and undo buttons. Emits what the user asks;
    the app's controller does it and reports back with `blocked`."""

    block_requested = Signal(str, str, int)  # profile, host, port
    unblock_requested = Signal(str)  # the block's grant id

    def __init__(self, names: AgentNames, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names = names
        self.model = RequestsModel(names, parent=self)
        self.filter = RequestsFilter(self)
        self.filter.setSourceModel(self.model)
        self.agent_box = QComboBox()
        self.agent_box.setObjectName("agentFilter")
        self.agent_box.addItem("All agents", ("", ""))
        self.agent_box.setMinimumWidth(200)
        label = QLabel("A&gent:")
        label.setBuddy(self.agent_box)
        self.block_button = QPushButton("&Block this host")
        self.block_button.setObjectName("blockHost")
        self.block_button.setEnabled(False)
        self.undo_button = QPushButton("&Undo block")
        self.undo_button.setObjectName("undoBlock")
        self.undo_button.hide()
        self.status = QLabel()
        self.status.setObjectName("blockStatus")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        bar = QHBoxLayout()
        bar.addWidget(label)
        bar.addWidget(self.agent_box)
        bar.addStretch(1)
        bar.addWidget(self.block_button)
        self.view = QTableView()
        self.view.setTabKeyNavigation(False)  # arrows move between rows; Tab leaves the view
        self.view.setObjectName("requests")
        self.view.setModel(self.filter)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setShowGrid(False)
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(26)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header = self.view.horizontalHeader()
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setHighlightSections(False)
        # The request takes what is left; who decided is as wide as its longest words up to
        # a point (a profile rule can be long: it loses its middle, its tooltip has it all).
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        for column, width in ((0, 72), (1, 160), (3, 72), (4, 80), (5, 116), (6, 220)):
            header.resizeSection(column, width)
        self.empty = QLabel(
            "No request yet. Each connection an agent makes through Airlock is listed here "
            "with who decided it; select one to block its host."
        )
        self.empty.setWordWrap(True)
        self.empty.setEnabled(False)  # the palette's disabled text: readable in every theme
        undo = QHBoxLayout()
        undo.addWidget(self.status, 1)
        undo.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.empty)
        layout.addLayout(undo)
        self._agents: set[tuple[str, str]] = set()
        self._block: NetworkGrant | None = None
        self._following = True
        self.view.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.view.verticalScrollBar().rangeChanged.connect(self._grew)
        self.agent_box.currentIndexChanged.connect(self._filter_changed)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.block_button.clicked.connect(self.block_selected)
        self.undo_button.clicked.connect(self._undo)

    def _scrolled(self, value: int) -> None:
        self._following = value >= self.view.verticalScrollBar().maximum() - 2

    def _grew(self, _low: int, high: int) -> None:
        # New rows, or the list shown or resized: a list left at its newest row stays there.
        if self._following:
            self.view.verticalScrollBar().setValue(high)

    def add(self, batch: Sequence[Event]) -> None:
        self.model.add(batch)
        self.empty.setVisible(not self.model.rows)
        for event in batch:
            row = request_row(event)
            if row is not None:
                self._offer_agent(row)

    def _offer_agent(self, row: RequestRow) -> None:
        profile = row.profile or self.names.profile(row.session) or ""
        if profile and ("", profile) not in self._agents:
            self._agents.add(("", profile))
            self.agent_box.addItem(f"{profile} (all its sessions)", (profile, ""))
        if row.session and (row.session, "") not in self._agents:
            self._agents.add((row.session, ""))
            self.agent_box.addItem(agent_name(profile, row.session), ("", row.session))

    def _filter_changed(self) -> None:
        profile, session = self.agent_box.currentData() or ("", "")
        self.filter.set_agent(profile, session)

    def selected(self) -> RequestRow | None:
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return None
        row = self.filter.mapToSource(rows[0]).row()
        return self.model.rows[row]

    def _blockable(self, row: RequestRow | None) -> tuple[str, str, int] | None:
        if row is None or not row.host or not row.port or row.method == "":
            return None
        profile = row.profile or self.names.profile(row.session)
        return (profile, row.host, row.port) if profile else None

    def _selection_changed(self) -> None:
        target = self._blockable(self.selected())
        self.block_button.setEnabled(target is not None)
        if target is not None:
            profile, host, port = target
            self.block_button.setToolTip(
                f"Refuse {host}:{port} to every session of {profile} from now on, running "
                "ones included (listed in the Grants tab; undo here or revoke it there)"
            )

    def block_selected(self) -> None:
        target = self._blockable(self.selected())
        if target is not None:
            self.block_requested.emit(*target)

    def _context_menu(self, at: QPoint) -> None:
        index = self.view.indexAt(at)
        if not index.isValid():
            return
        self.view.selectRow(index.row())
        target = self._blockable(self.selected())
        if target is None:
            return
        profile, host, port = target
        menu = QMenu(self)
        action = menu.addAction(f"Block {host}:{port} for {profile}")
        action.triggered.connect(self.block_selected)
        menu.popup(self.view.viewport().mapToGlobal(at))

    def blocked(self, grant: NetworkGrant) -> None:
        """The controller stored the block: say so, and offer its undo."""
        self._block = grant
        self.status.setText(
            f"Blocked {grant.subject} for {grant.profile}: its sessions are refused it from "
            f"now on (grant {grant.id}, in the Grants tab)."
        )
        self.undo_button.show()

    def unblocked(self, grant: str) -> None:
        if self._block is not None and self._block.id == grant:
            self.status.setText(f"Unblocked {self._block.subject} for {self._block.profile}.")
            self._block = None
            self.undo_button.hide()

    def _undo(self) -> None:
        if self._block is not None:
            self.unblock_requested.emit(self._block.id)
