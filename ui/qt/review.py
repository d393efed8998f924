"""The review window: a session's staged changes with their diffs; approve files one by one,
commit the approved ones, discard, and undo past commits.

Reading staged trees, hashing and committing touch the disk, so each runs in a thread; the
Review gets a bus whose events are handed back to the loop (`ThreadBus`), because the core's
EventBus is published on the loop's thread only.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontDatabase, QSyntaxHighlighter, QTextCharFormat
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.commit import CommitRecord, CommitResult
from app.errors import AirlockError
from app.review import Review, diff, mode_text, name_warnings, runs_code
from app.staging import Change, ChangeKind, Changeset
from app.text import printable
from ui.qt.icons import icon
from ui.qt.models import human_bytes
from ui.qt.screen import fit_on_screen

log = logging.getLogger(__name__)

STATUS_COLOURS = {
    ChangeKind.ADDED: "#1e7b34",
    ChangeKind.MODIFIED: "#b35c00",
    ChangeKind.DELETED: "#a4262c",
    ChangeKind.RENAMED: "#1f5fbf",
}


class DiffHighlighter(QSyntaxHighlighter):
    """Unified-diff colouring: additions, deletions, hunk headers, file headers."""

    def __init__(self, document: Any) -> None:
        super().__init__(document)
        self._formats: dict[str, QTextCharFormat] = {}
        for prefix, foreground, background, bold in (
            ("+", "#116329", "#e6ffec", False),
            ("-", "#82071e", "#ffebe9", False),
            ("@", "#0550ae", "#ddf4ff", False),
            ("h", "#24292f", "#f6f8fa", True),
        ):
            fmt = QTextCharFormat()
            fmt.setForeground(QColor(foreground))
            fmt.setBackground(QColor(background))
            if bold:
                fmt.setFontWeight(QFont.Weight.Bold)
            self._formats[prefix] = fmt

    def highlightBlock(self, text: str) -> None:
        if text.startswith(("+++", "---")):
            key = "h"
        elif text.startswith("@@"):
            key = "@"
        elif text[:1] in ("+", "-"):
            key = text[0]
        else:
            return
        self.setFormat(0, len(text), self._formats[key])


class ReviewWindow(QWidget):
    """One session's staged changes. `load()` (a coroutine) fills it."""

    committed = Signal(object)  # CommitResult

    def __init__(
        self,
        session: str,
        review: Review,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.session = session
        self.review = review
        self._spawn = spawn
        self.changeset: Changeset | None = None
        self.diffs: dict[Path, str] = {}
        self.warnings: dict[Path, list[str]] = {}  # about names that pass for others
        self.risky: dict[Path, list[str]] = {}  # what a change could run on this machine
        self.setObjectName("reviewWindow")
        self.setWindowTitle(f"Review changes — session {session}")
        self.setWindowIcon(icon("airlock"))
        fit_on_screen(self, 1000, 640)

        self.title = QLabel(f"Changes staged by session {session}")
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        self.title.setFont(font)
        self.note = QLabel("Nothing reaches your files until you commit it.")
        self.note.setTextFormat(Qt.TextFormat.PlainText)
        self.note.setStyleSheet("color: #667085;")

        self.files = QTreeWidget()
        self.files.setObjectName("changes")
        self.files.setHeaderLabels(["File", "Status", "Mode", "Size"])
        self.files.setRootIsDecorated(False)
        self.files.setAlternatingRowColors(True)
        self.files.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.files.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        header.resizeSection(1, 90)
        header.resizeSection(2, 110)
        header.resizeSection(3, 80)
        self.files.currentItemChanged.connect(self._show_diff)
        self.files.itemChanged.connect(lambda *_: self._update_buttons())

        self.viewer = QPlainTextEdit()
        self.viewer.setObjectName("diff")
        self.viewer.setReadOnly(True)
        self.viewer.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.viewer.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.highlighter = DiffHighlighter(self.viewer.document())

        self.history = QTreeWidget()
        self.history.setObjectName("history")
        self.history.setHeaderLabels(["Commit", "When", "Files", "State"])
        self.history.setRootIsDecorated(False)
        self.history.setMaximumHeight(120)

        self.approve_all = QPushButton("Approve &all")
        self.commit_button = QPushButton("&Commit selected")
        self.commit_button.setObjectName("commit")
        self.commit_button.setDefault(True)
        self.discard_button = QPushButton("&Discard selected")
        self.discard_button.setObjectName("discard")
        self.undo_button = QPushButton("&Undo commit")
        self.undo_button.setObjectName("undo")
        self.approve_all.clicked.connect(self._approve_all)
        self.commit_button.clicked.connect(lambda: self._spawn(self.commit_selected()))
        self.discard_button.clicked.connect(lambda: self._spawn(self.discard_selected()))
        self.undo_button.clicked.connect(lambda: self._spawn(self.undo_selected()))

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.files, 1)
        row = QHBoxLayout()
        row.addWidget(self.approve_all)
        row.addStretch(1)
        left_layout.addLayout(row)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(self.viewer)
        splitter.setSizes([360, 640])

        buttons = QHBoxLayout()
        self.status = QLabel()
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.discard_button)
        buttons.addWidget(self.commit_button)

        history_row = QHBoxLayout()
        history_row.addWidget(QLabel("Past commits:"))
        history_row.addStretch(1)
        history_row.addWidget(self.undo_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 14)
        layout.addWidget(self.title)
        layout.addWidget(self.note)
        layout.addWidget(splitter, 1)
        layout.addLayout(buttons)
        layout.addLayout(history_row)
        layout.addWidget(self.history)
        self._update_buttons()

    # loading

    async def load(self) -> None:
        try:
            # Recorded as a listing: its id is the one `airlock commit --reviewed` takes.
            changeset, _ = await asyncio.to_thread(self.review.listing, self.session)
        except AirlockError as e:
            changeset = Changeset(self.session, ())
            self.status.setText(str(e))
        diffs = await asyncio.to_thread(_diffs, changeset)
        warnings = await asyncio.to_thread(name_warnings, changeset)
        risky = await asyncio.to_thread(runs_code, changeset)
        records = await asyncio.to_thread(self.review.history)
        previous = self.changeset
        self.changeset, self.diffs, self.warnings = changeset, diffs, warnings
        self.risky = risky
        self._fill(changeset, previous)
        self._fill_history([r for r in records if r.session == self.session])

    def _fill(self, changeset: Changeset, previous: Changeset | None = None) -> None:
        # A reload (the agent wrote more) keeps what the user already approved and looks at,
        # unless it changed meanwhile: a tick is for what the person saw.
        before = {str(c.path): c.fingerprint for c in previous.changes} if previous else {}
        now = {str(c.path): c.fingerprint for c in changeset.changes}
        approved = {str(p) for p in self.approved() if now.get(str(p)) == before.get(str(p))}
        current = self.files.currentItem()
        looking_at = current.data(0, Qt.ItemDataRole.UserRole) if current else None
        self.files.blockSignals(True)
        self.files.clear()
        paths = [str(change.path) for change in changeset.changes]
        base = os.path.commonpath(paths) if paths else ""
        if len(paths) == 1 or base in paths:
            base = os.path.dirname(base)
        self.note.setText(
            f"In {printable(base)}. Nothing reaches your files until you "
            "commit it; tick the files you approve."
            if base
            else "Nothing reaches your files until you commit it."
        )
        warning_icon = QApplication.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        for change in changeset.changes:
            shown = os.path.relpath(change.path, base) if base else str(change.path)
            item = QTreeWidgetItem(
                [
                    printable(shown),
                    str(change.kind),
                    mode_text(change).removeprefix("mode ").replace("->", "→"),
                    human_bytes(change.new_size or 0) if change.new_size is not None else "",
                ]
            )
            item.setData(0, Qt.ItemDataRole.UserRole, str(change.path))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                0,
                Qt.CheckState.Checked if str(change.path) in approved else Qt.CheckState.Unchecked,
            )
            item.setForeground(1, QColor(STATUS_COLOURS.get(change.kind, "#24292f")))
            if mode_text(change):
                item.setToolTip(2, f"Lands with {mode_text(change)}")
            tips = [printable(str(change.path))]
            warnings = self.warnings.get(change.path)
            if warnings:
                # Seen on the row, not only on hover; never ticked by "Approve all".
                item.setIcon(0, warning_icon)
                item.setForeground(0, QColor("#9a6700"))
                tips.append("Check this name: it " + "; it ".join(printable(w) for w in warnings))
            risky = self.risky.get(change.path)
            if risky:
                item.setIcon(0, warning_icon)
                item.setForeground(0, QColor("#9a6700"))
                tips.append(
                    "Can run code on this machine: " + "; ".join(printable(r) for r in risky)
                )
            if change.problems:
                tips.append("Would be refused: " + "; ".join(printable(p) for p in change.problems))
                item.setForeground(0, QColor("#a4262c"))
            item.setToolTip(0, plain_tip("\n".join(tips)))
            self.files.addTopLevelItem(item)
        self.files.blockSignals(False)
        count = len(changeset.changes)
        flagged = sum(1 for c in changeset.changes if c.path in self.warnings)
        running = sum(1 for c in changeset.changes if c.path in self.risky)
        self.status.setText(
            (
                f"{count} change{'' if count == 1 else 's'}, id {changeset.digest}"
                + (f"; {flagged} with a name to check" if flagged else "")
                + (f"; {running} can run code" if running else "")
            )
            if count
            else "No staged changes"
        )
        if count:
            current = (self.item_for(Path(looking_at)) if looking_at else None) or next(
                self._items(), None
            )
            if current is not None:
                self.files.setCurrentItem(current)
        else:
            self.viewer.setPlainText("")
        self._update_buttons()

    def _fill_history(self, records: list[CommitRecord]) -> None:
        self.history.clear()
        for record in reversed(records):
            state = (
                "undone" if record.undone_by else ("undo" if record.undo_of else str(record.state))
            )
            item = QTreeWidgetItem(
                [
                    record.id,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created_at)),
                    str(len(record.operations)),
                    state,
                ]
            )
            item.setData(0, Qt.ItemDataRole.UserRole, record.id)
            item.setDisabled(bool(record.undone_by or record.undo_of))
            self.history.addTopLevelItem(item)
        self._update_buttons()

    def _show_diff(self, item: QTreeWidgetItem | None, _previous: object = None) -> None:
        if item is None:
            return
        path = Path(item.data(0, Qt.ItemDataRole.UserRole))
        warnings = "".join(
            f"warning: the name {printable(w)}\n" for w in self.warnings.get(path, ())
        )
        warnings += "".join(f"runs code: {printable(r)}\n" for r in self.risky.get(path, ()))
        self.viewer.setPlainText(warnings + ("\n" if warnings else "") + self.diffs.get(path, ""))

    # choices

    def _items(self) -> Iterator[QTreeWidgetItem]:
        for i in range(self.files.topLevelItemCount()):
            item = self.files.topLevelItem(i)
            if item is not None:
                yield item

    def approved(self) -> list[Path]:
        return [
            Path(item.data(0, Qt.ItemDataRole.UserRole))
            for item in self._items()
            if item.checkState(0) == Qt.CheckState.Checked
        ]

    def item_for(self, path: Path) -> QTreeWidgetItem | None:
        for item in self._items():
            if item.data(0, Qt.ItemDataRole.UserRole) == str(path):
                return item
        return None

    def _approve_all(self) -> None:
        """Ticks every change but those flagged (a name to check, code it could run): each
        of those the person ticks on their own, having looked at it; the status says so."""
        left = 0
        for item in self._items():
            path = Path(item.data(0, Qt.ItemDataRole.UserRole))
            if path in self.warnings or path in self.risky:
                left += item.checkState(0) != Qt.CheckState.Checked
            else:
                item.setCheckState(0, Qt.CheckState.Checked)
        if left:
            self.status.setText(
                f"{left} flagged change{'' if left == 1 else 's'} left "
                "unticked (a name to check, or it can run code): tick "
                f"{'it' if left == 1 else 'them'} yourself if you approve"
            )

    def _update_buttons(self) -> None:
        chosen = bool(self.approved())
        self.commit_button.setEnabled(chosen)
        self.discard_button.setEnabled(chosen)
        self.approve_all.setEnabled(self.files.topLevelItemCount() > 0)
        self.undo_button.setEnabled(self.history.topLevelItemCount() > 0)

    async def commit_selected(self) -> CommitResult | None:
        paths = self.approved()
        if not paths:
            return None
        # What was shown is what may land: a change the agent made again since is refused.
        reviewed = {
            change.path: change.fingerprint
            for change in (self.changeset.changes if self.changeset else ())
        }
        try:
            result = await asyncio.to_thread(self.review.commit, self.session, paths, reviewed)
        except AirlockError as e:
            self.status.setText(str(e))
            return None
        refused = "; ".join(f"{p}: {why}" for p, why in result.refused)
        self.status.setText(
            f"Committed {len(result.applied)} file(s)"
            + (f"; refused: {refused}" if refused else "")
        )
        self.committed.emit(result)
        await self.load()
        return result

    async def discard_selected(self) -> None:
        paths = self.approved()
        if not paths:
            return
        answer = QMessageBox.question(
            self,
            "Discard changes",
            f"Throw away {len(paths)} staged change(s)? This cannot be undone.",
            QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Discard:
            return
        await self.discard(paths)

    async def discard(self, paths: list[Path]) -> None:
        try:
            await asyncio.to_thread(self.review.discard, self.session, paths)
        except AirlockError as e:
            self.status.setText(str(e))
            return
        await self.load()
        self.status.setText(f"Discarded {len(paths)} change(s)")

    async def undo_selected(self) -> CommitResult | None:
        item = self.history.currentItem() or self.history.topLevelItem(0)
        if item is None or item.isDisabled():
            return None
        commit = str(item.data(0, Qt.ItemDataRole.UserRole))
        try:
            result = await asyncio.to_thread(self.review.undo, commit)
        except AirlockError as e:
            self.status.setText(str(e))
            return None
        self.status.setText(f"Undid {commit}: {len(result.applied)} file(s) restored")
        await self.load()
        return result


def plain_tip(text: str) -> str:
    """A tooltip that shows `text` as it is: Qt takes a tooltip that looks like HTML for
    HTML, and an agent chooses file names (`<img src=…>`, `<b>approved</b>`)."""
    return "<p style='white-space:pre'>" + html.escape(text) + "</p>"


def _diffs(changeset: Changeset) -> dict[Path, str]:
    return {change.path: _diff_text(change) for change in changeset.changes}


def _diff_text(change: Change) -> str:
    try:
        return "".join(diff(change))
    except OSError as e:
        return f"cannot show the difference: {e}\n"
