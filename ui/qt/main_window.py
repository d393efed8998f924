"""The main window: sessions, the live activity feed, network, grants with their Revoke buttons,
the audit log with its verification state. (The "Launch agent…" dialog is ui/qt/launch.py.)

The window only shows and asks: it emits signals for what the user wants done, and the app's
controller (ui/qt/app.py) does it on the loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from PySide6.QtCore import (
    QPointF,
    QRectF,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
    SignalInstance,
)
from PySide6.QtGui import QCloseEvent, QFont, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.audit import AuditRecord, Verification
from app.events import Event, EventKind
from app.grants import AnyGrant, Mode, NetworkGrant
from app.store import SessionRecord
from ui.qt.agents import AgentNames
from ui.qt.grants_view import UndoBar, confirm_revoke
from ui.qt.icons import icon
from ui.qt.launch import LaunchDialog as LaunchDialog  # its home before ui/qt/launch.py
from ui.qt.models import (
    ActivityFilter,
    ActivityModel,
    AuditModel,
    GrantsModel,
    NetworkModel,
    SessionsModel,
    human_bytes,
)
from ui.qt.network_view import NetworkRequestsPanel
from ui.qt.screen import available, fit_on_screen, fit_rows
from ui.qt.session_view import HistoryPanel
from ui.qt.theme import Hue, mix, muted, text_colour, tone

KIND_GROUPS = (
    ("All kinds", ""),
    ("Sessions", "session"),
    ("Files", "file"),
    ("Grants", "grant"),
    ("Requests", "request"),
    ("Network", "net"),
    ("Changes", "changes"),
    ("Output", str(EventKind.SESSION_OUTPUT)),
)


def table(model: object, *, stretch: int = -1, fit: Iterable[int] = ()) -> QTableView:
    """A read-only list of rows; `stretch` takes the room left, the `fit` columns are as wide
    as their content (short fixed-format values: ids, times, sizes)."""
    view = QTableView()
    view.setModel(model)  # type: ignore[arg-type]
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setAlternatingRowColors(True)
    view.setShowGrid(False)
    view.setWordWrap(False)
    view.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep the file name of long paths
    view.setTabKeyNavigation(False)  # arrows move between cells; Tab leaves the table
    view.verticalHeader().hide()
    view.verticalHeader().setDefaultSectionSize(26)
    header = view.horizontalHeader()
    header.setHighlightSections(False)
    header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    if stretch >= 0:
        header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    for column in fit:
        header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
    return view


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.15)
    font.setBold(True)
    label.setFont(font)
    return label


def opening_size(width: int, height: int) -> tuple[int, int]:
    """The main window's first size on a screen whose free area is `width` x `height`: all of
    a laptop's screen (up to 1440 wide, where a smaller window only leaves a useless band
    beside it), most of a larger one, and never wider than reading a table needs."""
    if width <= 1440:
        return width, height
    return min(max(1100, width * 3 // 4), 1600), min(max(680, height * 4 // 5), 1000)


class TrafficPlot(QWidget):
    """Bytes sent and received per second over the last two minutes."""

    def __init__(self, model: NetworkModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model = model
        self.setMinimumHeight(120)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.update)
        self._timer.start(1000)

    def paintEvent(self, event: object) -> None:
        colours = self.palette()
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        area = QRectF(self.rect()).adjusted(48, 10, -12, -22)
        base = colours.color(QPalette.ColorRole.Base)
        painter.fillRect(self.rect(), colours.color(QPalette.ColorRole.Window))
        painter.fillRect(area, base)
        painter.setPen(QPen(mix(base, colours.color(QPalette.ColorRole.Text), 0.3), 1))
        painter.drawRect(area)
        span = NetworkModel.HISTORY
        now = int(time.time())
        samples = {second: (up, down) for second, up, down in self._model.per_second}
        peak = max([1, *(max(u, d) for u, d in samples.values())])
        painter.setPen(muted(colours))
        small = QFont(self.font())
        small.setPointSizeF(small.pointSizeF() * 0.85)
        painter.setFont(small)
        painter.drawText(
            QRectF(0, area.top() - 6, 44, 14), Qt.AlignmentFlag.AlignRight, f"{human_bytes(peak)}/s"
        )
        painter.drawText(QRectF(0, area.bottom() - 8, 44, 14), Qt.AlignmentFlag.AlignRight, "0")
        painter.drawText(
            QRectF(area.left(), area.bottom() + 4, area.width(), 14),
            Qt.AlignmentFlag.AlignLeft,
            f"−{span} s",
        )
        painter.drawText(
            QRectF(area.left(), area.bottom() + 4, area.width(), 14),
            Qt.AlignmentFlag.AlignRight,
            "now",
        )
        sent, received = tone(colours, Hue.SENT), tone(colours, Hue.RECEIVED)
        for which, colour in ((0, sent), (1, received)):
            path = QPainterPath()
            for step in range(span + 1):
                second = now - span + step
                value = samples.get(second, (0, 0))[which]
                point = QPointF(
                    area.left() + area.width() * step / span,
                    area.bottom() - area.height() * value / peak,
                )
                if step == 0:
                    path.moveTo(point)
                else:
                    path.lineTo(point)
            painter.setPen(QPen(colour, 1.6))
            painter.drawPath(path)
        # The legend on a patch of the plot's ground: lines running under it stay legible.
        legend = painter.fontMetrics().horizontalAdvance("■ received") + 72
        painter.fillRect(QRectF(area.left() + 4, area.top() + 3, legend, 16), base)
        painter.setPen(sent)
        painter.drawText(
            QRectF(area.left() + 8, area.top() + 4, 120, 14), Qt.AlignmentFlag.AlignLeft, "■ sent"
        )
        painter.setPen(received)
        painter.drawText(
            QRectF(area.left() + 64, area.top() + 4, 120, 14),
            Qt.AlignmentFlag.AlignLeft,
            "■ received",
        )
        painter.end()


class ActivityPanel(QWidget):
    """The live feed: filter by session and kind, search, follow or pause."""

    def __init__(self, names: AgentNames | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names = names or AgentNames()
        self.model = ActivityModel(parent=self)
        self.model.names = self.names
        self.filter = ActivityFilter(self)
        self.filter.setSourceModel(self.model)
        self._held: list[Event] = []
        self.session_box = QComboBox()
        self.session_box.setObjectName("sessionFilter")
        self.session_box.addItem("All agents", "")
        self.session_box.setMinimumWidth(170)
        self.kind_box = QComboBox()
        self.kind_box.setObjectName("kindFilter")
        for title, value in KIND_GROUPS:
            self.kind_box.addItem(title, value)
        self.search = QLineEdit()
        self.search.setObjectName("search")
        self.search.setPlaceholderText("Search subject and details…")
        self.search.setClearButtonEnabled(True)
        self.follow = QCheckBox("&Follow")
        self.follow.setChecked(True)
        self.pause = QPushButton("&Pause")
        self.pause.setObjectName("pause")
        self.pause.setCheckable(True)
        self.status = QLabel()
        text_colour(self.status, muted)
        bar = QHBoxLayout()
        bar.addWidget(self.session_box)
        bar.addWidget(self.kind_box)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.follow)
        bar.addWidget(self.pause)
        self.view = table(self.filter, stretch=4)
        self.view.setObjectName("activity")
        self.view.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        header = self.view.horizontalHeader()
        for column, width in ((0, 100), (1, 160), (2, 130), (3, 260)):
            header.resizeSection(column, width)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        self.session_box.currentIndexChanged.connect(
            lambda: self.filter.set_filter(session=self.session_box.currentData())
        )
        self.kind_box.currentIndexChanged.connect(
            lambda: self.filter.set_filter(kind=self.kind_box.currentData())
        )
        self.search.textChanged.connect(lambda text: self.filter.set_filter(text=text))
        self.pause.toggled.connect(self._paused)
        self._sessions: set[str] = set()

    def add(self, batch: Sequence[Event]) -> None:
        for event in batch:
            if event.session and event.session not in self._sessions:
                self._sessions.add(event.session)
                self.session_box.addItem(self.names.name(event.session), event.session)
        if self.pause.isChecked():
            self._held.extend(batch)
            del self._held[: max(0, len(self._held) - self.model.capacity)]
            self.status.setText(f"Paused: {len(self._held)} new events held")
            return
        self.model.append(batch)
        if self.follow.isChecked():
            self.view.scrollToBottom()
        self.status.setText(
            f"{self.model.rowCount()} events shown (the latest {self.model.capacity})"
        )

    def rename(self) -> None:
        """The agents' names became known after their sessions were listed."""
        for index in range(1, self.session_box.count()):
            self.session_box.setItemText(index, self.names.name(self.session_box.itemData(index)))

    def show_session(self, session: str) -> None:
        index = self.session_box.findData(session)
        if index < 0:
            self.session_box.addItem(self.names.name(session), session)
            self._sessions.add(session)
            index = self.session_box.count() - 1
        self.session_box.setCurrentIndex(index)

    def _paused(self, paused: bool) -> None:
        self.pause.setText("&Resume" if paused else "&Pause")
        if not paused:
            held, self._held = self._held, []
            self.add(held)


class MainWindow(QMainWindow):
    launch_requested = Signal()
    stop_requested = Signal(str)
    revoke_session_requested = Signal(str)
    review_requested = Signal(str)
    revoke_grant_requested = Signal(str)  # confirmed by the user (ui/qt/grants_view.py)
    block_host_requested = Signal(str, str, int)  # profile, host, port
    unblock_requested = Signal(str)  # a block's grant id
    restore_requested = Signal(list)  # grant ids: the undo of a revocation
    verify_requested = Signal()
    settings_requested = Signal()
    session_selected = Signal(str)  # running or ended: its detail is wanted
    hidden = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("Airlock")
        self.setWindowIcon(icon("airlock"))
        width, height = opening_size(available(self).width(), available(self).height())
        fit_on_screen(self, width, height)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.setCentralWidget(self.tabs)
        self.sessions = SessionsModel(self)
        self.grants = GrantsModel(self)
        self.audit = AuditModel(self)
        self.network = NetworkModel(self)
        self.names = AgentNames()  # sessions shown as their agents, everywhere in the window
        self.grants.names = self.audit.names = self.names
        self.activity = ActivityPanel(self.names)
        self.tabs.addTab(self._sessions_tab(), "&Sessions")
        self.tabs.addTab(self.activity, "&Activity")
        self.tabs.addTab(self._network_tab(), "&Network")
        self.tabs.addTab(self._grants_tab(), "&Grants")
        self.tabs.addTab(self._audit_tab(), "A&udit")
        settings = QPushButton("Se&ttings…")
        settings.setObjectName("settings")
        settings.setFlat(True)
        settings.clicked.connect(self.settings_requested)
        self.tabs.setCornerWidget(settings)
        self.statusBar().showMessage("Ready")

    # tabs

    def _sessions_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        top = QHBoxLayout()
        top.addWidget(heading("Running agents"))
        top.addStretch(1)
        self.launch_button = QPushButton(icon("airlock"), "&Launch agent…")
        self.launch_button.setObjectName("launch")
        self.launch_button.clicked.connect(self.launch_requested)
        top.addWidget(self.launch_button)
        layout.addLayout(top)
        # The sandbox's verdict takes what is left (a refusal says why at length); the rest
        # are as wide as what they say, so an image's name is never cut.
        self.sessions_view = table(self.sessions, stretch=5, fit=(0, 1, 2, 3, 4))
        self.sessions_view.setObjectName("sessions")
        fit_rows(self.sessions_view, 0)
        layout.addWidget(self.sessions_view, 1)
        self.sessions_empty = QLabel(
            "No agent is running. Launch one with “Launch agent…”, or start one in a terminal "
            "with “airlock run”: it appears here."
        )
        text_colour(self.sessions_empty, muted, " padding: 6px;")
        layout.addWidget(self.sessions_empty)
        buttons = QHBoxLayout()
        self.review_button = QPushButton("&Review changes…")
        self.stop_button = QPushButton("S&top")
        self.revoke_session_button = QPushButton("Revoke all of its a&ccess")
        for button in (self.review_button, self.stop_button, self.revoke_session_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.review_button.clicked.connect(lambda: self._with_session(self.review_requested))
        self.stop_button.clicked.connect(lambda: self._with_session(self.stop_requested))
        self.revoke_session_button.clicked.connect(
            lambda: self._with_session(self.revoke_session_requested)
        )
        self.sessions_view.doubleClicked.connect(
            lambda index: self.activity_for(self.sessions.rows[index.row()].id)
        )
        self.sessions_view.selectionModel().selectionChanged.connect(self._running_selected)
        self.history = HistoryPanel()  # ended sessions, and the detail of the selected one
        self.history.selected.connect(self.session_selected)
        # One session at a time has the detail: choosing in one list clears the other's row.
        self.history.selected.connect(lambda _: self.sessions_view.clearSelection())
        layout.addWidget(self.history, 2)
        return page

    def _running_selected(self) -> None:
        rows = self.sessions_view.selectionModel().selectedRows()
        if rows:
            self.history.view.clearSelection()
            self.session_selected.emit(str(self.sessions.rows[rows[0].row()].id))

    def _with_session(self, signal: SignalInstance) -> None:
        session = self.selected_session()
        if session:
            signal.emit(session)

    def selected_session(self) -> str | None:
        rows = self.sessions_view.selectionModel().selectedRows()
        if rows:
            return str(self.sessions.rows[rows[0].row()].id)
        return str(self.sessions.rows[0].id) if len(self.sessions.rows) == 1 else None

    def _network_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(heading("Traffic through the egress proxy"))
        self.plot = TrafficPlot(self.network)
        proxy = QSortFilterProxyModel(self)
        proxy.setSourceModel(self.network)
        proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.network_view = table(proxy, stretch=0)
        self.network_view.setObjectName("network")
        self.network_view.setSortingEnabled(True)
        self.network_view.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.requests = NetworkRequestsPanel(self.names)
        self.requests.block_requested.connect(self.block_host_requested)
        self.requests.unblock_requested.connect(self.unblock_requested)
        lists = QTabWidget()
        lists.setObjectName("networkLists")
        lists.addTab(self.requests, "Requests")
        lists.addTab(self.network_view, "Hosts")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.plot)
        splitter.addWidget(lists)
        splitter.setSizes([140, 420])
        layout.addWidget(splitter, 1)
        return page

    def _grants_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(heading("What agents may see and reach"))
        note = QLabel(
            "Revoking takes a file or folder out of the agent at once; a host's answer is "
            "forgotten and its open connections are cut."
        )
        note.setWordWrap(True)
        text_colour(note, muted)
        layout.addWidget(note)
        self.undo_bar = UndoBar()
        self.undo_bar.undo_requested.connect(self.restore_requested)
        layout.addWidget(self.undo_bar)
        self.grants_view = table(self.grants, stretch=0, fit=(1, 2, 3, 4, 5))
        self.grants_view.setObjectName("grants")
        self.grants_view.verticalHeader().setDefaultSectionSize(34)
        self.grants_view.horizontalHeader().resizeSection(GrantsModel.REVOKE_COLUMN, 96)
        layout.addWidget(self.grants_view, 1)
        self.grants_empty = QLabel(
            "Nothing is granted. An agent sees only the files and folders you pick when you "
            "launch it; what it asks for later, and your remembered answers about hosts, are "
            "listed here."
        )
        self.grants_empty.setWordWrap(True)
        text_colour(self.grants_empty, muted, " padding: 6px;")
        layout.addWidget(self.grants_empty)
        return page

    def _audit_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        top = QHBoxLayout()
        top.addWidget(heading("Audit log"))
        top.addStretch(1)
        self.verify_button = QPushButton("&Verify now")
        self.verify_button.clicked.connect(self.verify_requested)
        top.addWidget(self.verify_button)
        layout.addLayout(top)
        self.verification = QLabel("Not verified yet")
        self.verification.setObjectName("verification")
        self.verification.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.verification)
        self.audit_view = table(self.audit, stretch=4, fit=(0, 1, 2, 3, 5))
        self.audit_view.setObjectName("audit")
        layout.addWidget(self.audit_view, 1)
        return page

    # what the controller feeds in

    def set_unwatched(self, sessions: frozenset[str]) -> None:
        """Sessions whose file activity could not be watched in full."""
        self.sessions.set_unwatched(sessions)

    def set_sessions(self, sessions: Sequence[SessionRecord]) -> None:
        if self.names.learn(sessions):
            self._names_changed()
        self.sessions.replace(sessions)
        self.sessions_empty.setVisible(not sessions)
        fit_rows(self.sessions_view, len(sessions))
        for button in (self.review_button, self.stop_button, self.revoke_session_button):
            button.setEnabled(bool(sessions))

    def set_grants(self, grants: Iterable[AnyGrant]) -> None:
        self.grants.replace(grants)
        self.grants_empty.setVisible(not self.grants.rows)
        for row, grant in enumerate(self.grants.rows):
            button = QPushButton("Revoke")
            button.setObjectName(f"revoke-{grant.id}")
            button.setToolTip(revoke_tip(grant))
            button.clicked.connect(lambda _=False, g=grant: self._confirm_revoke(g))
            self.grants_view.setIndexWidget(
                self.grants.index(row, GrantsModel.REVOKE_COLUMN), button
            )

    def _confirm_revoke(self, grant: AnyGrant) -> None:
        """Asks first, saying what the agent loses; `revoke_grant_requested` on yes."""
        self.revoke_box = confirm_revoke(self, grant, self.names, self.revoke_grant_requested.emit)

    def _names_changed(self) -> None:
        self.activity.rename()
        for model, column in ((self.grants, 3), (self.audit, 2), (self.activity.model, 1)):
            rows = model.rowCount()
            if rows:
                model.dataChanged.emit(model.index(0, column), model.index(rows - 1, column))

    def revoke_button(self, grant: str) -> QPushButton | None:
        return self.grants_view.findChild(QPushButton, f"revoke-{grant}")

    def add_events(self, batch: Sequence[Event]) -> None:
        if self.names.learn_events(batch):
            self._names_changed()
        self.activity.add(batch)
        self.network.add(batch)
        self.requests.add(batch)

    def set_audit(self, records: Sequence[AuditRecord], verification: Verification | None) -> None:
        self.audit.replace(records)
        self.audit_view.scrollToBottom()
        if verification is None:
            return
        if verification.ok:
            self.verification.setText(
                f"✔  Intact: {verification.records} records in {verification.segments} "
                f"segment(s) chain correctly (head {verification.head[:16]}…)"
            )
            text_colour(self.verification, lambda p: tone(p, Hue.SUCCESS), " font-weight: bold;")
        else:
            self.verification.setText(f"✘  Broken: {verification.problem}")
            text_colour(self.verification, lambda p: tone(p, Hue.DANGER), " font-weight: bold;")

    def activity_for(self, session: str) -> None:
        self.activity.show_session(session)
        self.tabs.setCurrentWidget(self.activity)
        self.show_window()

    def show_window(self) -> None:
        self.show()
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:
        # Closing the window keeps Airlock in the tray; "Quit" in its menu ends it.
        event.ignore()
        self.hide()
        self.hidden.emit()


def revoke_tip(grant: AnyGrant) -> str:
    """What revoking `grant` does, said before the click: a read-write folder cannot be
    taken back from a running agent, so revoking it stops the agent's session; a host's
    open connections are cut."""
    if isinstance(grant, NetworkGrant):
        return (
            f"Forget this answer for {grant.subject} now: open connections it let "
            "through are cut, and the agent is asked again"
        )
    if grant.mode is Mode.READ_WRITE and grant.path.is_dir():
        return (
            f"Take {grant.path} away now. A read-write folder cannot be taken back from "
            "a running agent: its session stops (what it staged is kept for review)"
        )
    return f"Take {grant.path} away from the agent now"
