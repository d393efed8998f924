"""The sessions' history in the Sessions tab: ended sessions listed with their status and
duration, and for the one selected (ended or running) what it read, changed and sent, what
is left to review, its output (scroll-back), and, while it runs, what it can see right now."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.history import SessionSummary
from app.sessions.sight import SessionSight
from app.store import SessionRecord
from app.text import printable
from ui.history_text import duration_text, sight_text, status_text, summary_text
from ui.qt.models import RecordTable, clock
from ui.qt.screen import fit_rows

SHOWN_OUTPUT = 1024 * 1024  # characters of output put in the view at once (the latest)


class HistoryModel(RecordTable):
    headers = ("Agent", "Session", "Ended", "Duration", "Status")

    def cell(self, row: SessionRecord, column: int) -> Any:
        duration = None if row.ended_at is None else row.ended_at - row.started_at
        return (
            row.profile,
            row.id,
            clock(row.ended_at, True),
            duration_text(duration),
            printable(status_text(row)),
        )[column]


def _monospace() -> QFont:
    return QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)


class SessionDetail(QWidget):
    """One session: summary, output, and what it can see while it runs."""

    forget_requested = Signal(str)
    review_requested = Signal(str)
    refresh_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session: str | None = None
        self.title = QLabel("Select a session to see what it did")
        self.title.setObjectName("sessionTitle")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.tabs = QTabWidget()
        self.summary = self._text("sessionSummary")
        self.output = self._text("sessionOutput")
        self.output.setFont(_monospace())
        self.output.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.sight = self._text("sessionSight")
        self.tabs.addTab(self.summary, "S&ummary")
        self.tabs.addTab(self.output, "&Output")
        self.tabs.addTab(self.sight, "What it can s&ee now")
        self.review_button = QPushButton("Open the re&view…")
        self.review_button.setObjectName("historyReview")
        self.refresh_button = QPushButton("Re&fresh")
        self.forget_button = QPushButton("&Forget this session")
        self.forget_button.setObjectName("forget")
        self.forget_button.setToolTip(
            "Remove it from the history: its record, counts and output (its changes waiting "
            "for review must be committed or discarded first)"
        )
        buttons = QHBoxLayout()
        buttons.addWidget(self.review_button)
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        buttons.addWidget(self.forget_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(buttons)
        self.review_button.clicked.connect(lambda: self._emit(self.review_requested))
        self.forget_button.clicked.connect(lambda: self._emit(self.forget_requested))
        self.refresh_button.clicked.connect(lambda: self._emit(self.refresh_requested))
        self.clear()

    @staticmethod
    def _text(name: str) -> QPlainTextEdit:
        view = QPlainTextEdit()
        view.setObjectName(name)
        view.setReadOnly(True)
        view.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        return view

    def _emit(self, signal: Any) -> None:
        if self.session:
            signal.emit(self.session)

    def clear(self) -> None:
        self.session = None
        self.title.setText("Select a session to see what it read, changed and sent")
        for view in (self.summary, self.output, self.sight):
            view.clear()
        for button in (self.review_button, self.forget_button, self.refresh_button):
            button.setEnabled(False)

    def show_session(
        self, summary: SessionSummary, output: str, sight: SessionSight | None
    ) -> None:
        record = summary.record
        same = self.session == record.id
        self.session = record.id
        self.title.setText(f"{record.profile} · session {record.id} · {status_text(record)}")
        self.summary.setPlainText(summary_text(summary))
        bar = self.output.verticalScrollBar()
        at_end = not same or bar.value() >= bar.maximum() - 2
        if len(output) > SHOWN_OUTPUT:
            output = "[… earlier output kept on disk, not shown here …]\n" + output[-SHOWN_OUTPUT:]
        output = output or "(it printed nothing)"
        if not same or output != self.output.toPlainText():  # a selection in it stays
            self.output.setPlainText(output)
        if at_end:  # a scroll-back opens at its end, and stays there while followed
            bar.setValue(bar.maximum())
        self.sight.setPlainText(sight_text(sight, record.live))
        self.tabs.setTabEnabled(2, record.live)
        self.review_button.setEnabled(summary.waiting > 0)
        self.review_button.setText(
            f"Open the re&view ({summary.waiting} waiting)…"
            if summary.waiting
            else "Open the re&view…"
        )
        self.forget_button.setEnabled(not record.live)
        self.refresh_button.setEnabled(True)


class HistoryPanel(QWidget):
    """Ended sessions, latest first, above the detail of the selected session."""

    selected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = HistoryModel(self)
        self.view = QTableView()
        self.view.setTabKeyNavigation(False)  # arrows move between rows; Tab leaves the view
        self.view.setObjectName("history")
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setShowGrid(False)
        self.view.setWordWrap(False)
        self.view.verticalHeader().hide()
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.verticalHeader().setDefaultSectionSize(26)
        header = self.view.horizontalHeader()
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        for column in (0, 1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.empty = QLabel(
            "No session has ended yet. A finished agent stays listed here with its output, "
            "what it read, changed and sent, and what is left to review."
        )
        self.empty.setWordWrap(True)
        fit_rows(self.view, 0, least=2)
        self.empty.setEnabled(False)  # the palette's disabled text: readable in every theme
        self.detail = SessionDetail()
        self.top = top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        title = QLabel("Ended sessions")
        font = title.font()
        font.setBold(True)
        title.setFont(font)
        top_layout.addWidget(title)
        top_layout.addWidget(self.view, 1)
        top_layout.addWidget(self.empty)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(top)
        splitter.addWidget(self.detail)
        splitter.setSizes([140, 260])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        self.view.selectionModel().selectionChanged.connect(self._selection)
        self._fit_top()

    def _fit_top(self) -> None:
        # The list no taller than its rows: what the splitter has left goes to the detail,
        # not to gaps around the list's title.
        self.top.setMaximumHeight(self.top.sizeHint().height())

    def set_ended(
        self, records: Sequence[SessionRecord], live: Collection[str] = frozenset()
    ) -> None:
        """The ended sessions, latest first; `live`: the running ones (the detail may show
        one of them)."""
        chosen = self.chosen()
        self.model.replace(records)
        self.empty.setVisible(not records)
        fit_rows(self.view, len(records), least=2, most=6)
        self._fit_top()
        if chosen is not None:
            for row, record in enumerate(self.model.rows):
                if record.id == chosen:
                    self.view.selectRow(row)
        shown = self.detail.session
        if shown and shown not in live and all(r.id != shown for r in records):
            self.detail.clear()  # forgotten

    def chosen(self) -> str | None:
        rows = self.view.selectionModel().selectedRows()
        return str(self.model.rows[rows[0].row()].id) if rows else None

    def _selection(self) -> None:
        chosen = self.chosen()
        if chosen is not None:
            self.selected.emit(chosen)
