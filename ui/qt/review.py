"""The review window: a session's staged changes as a tree of files (folders folded into
their paths), each shown readably or as a raw diff; tick what you approve, commit it ("Commit
2 files"), see what landed with Undo at hand, and get undone changes back for review.

Reading staged trees, hashing and committing touch the disk, so each runs in a thread; the
Review gets a bus whose events are handed back to the loop (`ThreadBus`), because the core's
EventBus is published on the loop's thread only.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStyle,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.commit import CommitAction, CommitRecord, CommitResult
from app.errors import AirlockError
from app.readable import Folder, Leaf, Readable, common_base, folded, readable
from app.review import Review, diff, mode_text, name_warnings, runs_code
from app.staging import Change, ChangeKind, Changeset
from app.text import printable
from ui.qt.diff_view import AMBER, BLUE, GREEN, RED, DiffView, accent, wash
from ui.qt.icons import icon
from ui.qt.models import human_bytes
from ui.qt.screen import fit_on_screen

log = logging.getLogger(__name__)

PATH = Qt.ItemDataRole.UserRole  # a change's row: its host path
NEW_FOLDERS = Qt.ItemDataRole.UserRole + 1  # a folder row: the new folders it stands for

STATUS_HUES = {
    ChangeKind.ADDED: GREEN,
    ChangeKind.MODIFIED: AMBER,
    ChangeKind.DELETED: RED,
    ChangeKind.RENAMED: BLUE,
}

STATUS_WORDS = {
    ChangeKind.ADDED: "new",
    ChangeKind.MODIFIED: "changed",
    ChangeKind.DELETED: "deleted",
    ChangeKind.RENAMED: "moved",
    ChangeKind.MODE: "permissions",
}


def files_label(count: int) -> str:
    return f"{count} file{'' if count == 1 else 's'}"


class ReviewWindow(QWidget):
    """One session's staged changes. `load()` (a coroutine) fills it."""

    committed = Signal(object)  # CommitResult

    def __init__(
        self,
        session: str,
        review: Review,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        parent: QWidget | None = None,
        agent: str = "",
    ) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.session = session
        self.agent = agent
        self.review = review
        self._spawn = spawn
        self.changeset: Changeset | None = None
        self.diffs: dict[Path, str] = {}
        self.readables: dict[Path, Readable] = {}
        self.warnings: dict[Path, list[str]] = {}  # about names that pass for others
        self.risky: dict[Path, list[str]] = {}  # what a change could run on this machine
        self.returned: set[str] = set()  # back from an undo: marked until the next commit
        self.last_commit: str | None = None  # the commit the confirmation offers to undo
        who = printable(agent) if agent else f"session {session}"
        self.setObjectName("reviewWindow")
        self.setWindowTitle(f"Review changes — {who}" + (f" (session {session})" if agent else ""))
        self.setWindowIcon(icon("airlock"))
        fit_on_screen(self, 1000, 640)

        self.title = QLabel(f"Changes {who} wants to make")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        self.title.setFont(font)
        self.note = QLabel("Nothing reaches your files until you commit it.")
        self.note.setTextFormat(Qt.TextFormat.PlainText)
        self.note.setWordWrap(True)
        self.note.setForegroundRole(QPalette.ColorRole.PlaceholderText)

        # What the last commit or undo did, with Undo at hand; hidden until there is one.
        self.banner = QFrame()
        self.banner.setObjectName("confirmation")
        self.banner.setFrameShape(QFrame.Shape.StyledPanel)
        self.banner.setAutoFillBackground(True)
        self.banner_text = QLabel()
        self.banner_text.setTextFormat(Qt.TextFormat.PlainText)
        self.banner_text.setWordWrap(True)
        self.banner_undo = QPushButton("&Undo this commit")
        self.banner_undo.setObjectName("undoLast")
        self.banner_undo.clicked.connect(lambda: self._spawn(self.undo_last()))
        banner_close = QToolButton()
        banner_close.setText("✕")
        banner_close.setToolTip("Hide this message")
        banner_close.setAutoRaise(True)
        banner_close.clicked.connect(self.banner.hide)
        banner_row = QHBoxLayout(self.banner)
        banner_row.addWidget(self.banner_text, 1)
        banner_row.addWidget(self.banner_undo)
        banner_row.addWidget(banner_close)
        self.banner.hide()

        self.files = QTreeWidget()
        self.files.setTabKeyNavigation(False)  # arrows move between rows; Tab leaves the view
        self.files.setObjectName("changes")
        self.files.setHeaderLabels(["File", "Status", "Mode", "Size"])
        self.files.setRootIsDecorated(True)
        self.files.setAlternatingRowColors(True)
        # Long names lose their middle, not their end: the file's own name stays in view.
        self.files.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.files.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.files.header()
        # The name takes what the other columns leave; they take what their text needs.
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        self.files.currentItemChanged.connect(self._show_diff)
        self.files.itemChanged.connect(lambda *_: self._update_buttons())

        self.diff_view = DiffView()
        self.viewer = self.diff_view.raw

        self.history = QTreeWidget()
        self.history.setTabKeyNavigation(False)  # arrows move between rows; Tab leaves the view
        self.history.setObjectName("history")
        self.history.setHeaderLabels(["Commit", "When", "Files", "State"])
        self.history.setRootIsDecorated(False)
        self.history.setMaximumHeight(120)

        self.approve_all = QPushButton("Approve &all")
        self.commit_button = QPushButton("&Commit")
        self.commit_button.setObjectName("commit")
        self.commit_button.setDefault(True)
        self.discard_button = QPushButton("&Discard")
        self.discard_button.setObjectName("discard")
        self.undo_button = QPushButton("Undo &selected commit")
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
        splitter.addWidget(self.diff_view)
        splitter.setSizes([440, 560])

        buttons = QHBoxLayout()
        self.status = QLabel()
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)
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
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        layout.addLayout(buttons)
        layout.addLayout(history_row)
        layout.addWidget(self.history)
        for keys in (QKeySequence(Qt.Key.Key_Escape), QKeySequence("Ctrl+W")):
            QShortcut(keys, self, self.close, context=Qt.ShortcutContext.WindowShortcut)
        self._update_buttons()

    # loading

    async def load(self) -> None:
        try:
            # Recorded as a listing: its id is the one `airlock commit --reviewed` takes.
            changeset, _ = await asyncio.to_thread(self.review.listing, self.session)
        except AirlockError as e:
            changeset = Changeset(self.session, ())
            self.status.setText(str(e))
        diffs, readables = await asyncio.to_thread(_diffs, changeset)
        warnings = await asyncio.to_thread(name_warnings, changeset)
        risky = await asyncio.to_thread(runs_code, changeset)
        records = await asyncio.to_thread(self.review.history)
        previous = self.changeset
        self.changeset, self.diffs, self.warnings = changeset, diffs, warnings
        self.readables, self.risky = readables, risky
        self._fill(changeset, previous)
        self._fill_history([r for r in records if r.session == self.session])

    def _fill(self, changeset: Changeset, previous: Changeset | None = None) -> None:
        # A reload (the agent wrote more) keeps what the user already approved and looks at,
        # unless it changed meanwhile: a tick is for what the person saw.
        before = {str(c.path): c.fingerprint for c in previous.changes} if previous else {}
        now = {str(c.path): c.fingerprint for c in changeset.changes}
        approved = {str(p) for p in self.ticked() if now.get(str(p)) == before.get(str(p))}
        current = self.files.currentItem()
        looking_at = current.data(0, PATH) if current else None
        self.files.blockSignals(True)
        self.files.clear()
        base = common_base([c.path for c in changeset.changes])
        self.note.setText(
            f"In {printable(str(base))}. Nothing reaches your files until you "
            "commit it; tick the files you approve."
            if base is not None
            else "Nothing reaches your files until you commit it."
        )
        nodes = folded(changeset.changes, base) if base is not None else ()
        for node in nodes:
            self.files.addTopLevelItem(self._node_item(node, approved))
        self.files.expandAll()
        self.files.blockSignals(False)
        count = len(changeset.changes)
        flagged = sum(1 for c in changeset.changes if c.path in self.warnings)
        running = sum(1 for c in changeset.changes if c.path in self.risky)
        back = sum(1 for c in changeset.changes if str(c.path) in self.returned)
        self.status.setText(
            (
                f"{count} change{'' if count == 1 else 's'}, id {changeset.digest}"
                + (f"; {back} back from an undo" if back else "")
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
            self.diff_view.clear_change()
        self._update_buttons()

    def _node_item(self, node: Folder | Leaf, approved: set[str]) -> QTreeWidgetItem:
        palette = self.palette()
        style = QApplication.style()
        if isinstance(node, Folder):
            item = QTreeWidgetItem([printable(node.label) + "/", "new folder" if node.new else ""])
            item.setIcon(0, style.standardIcon(QStyle.StandardPixmap.SP_DirIcon))
            item.setData(0, NEW_FOLDERS, [str(c.path) for c in node.new])
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsUserCheckable)
            tips = [printable(str(node.path))]
            if node.new:
                item.setForeground(1, accent(palette, GREEN))
                tips.append("New: lands with the files you tick in it")
            for change in node.new:  # a new folder's name can pass for another, too
                for warning in self.warnings.get(change.path, ()):
                    item.setIcon(0, style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning))
                    item.setForeground(0, accent(palette, AMBER))
                    tips.append(
                        f"Check this name: {printable(change.path.name)} {printable(warning)}"
                    )
            item.setToolTip(0, plain_tip("\n".join(tips)))
            for child in node.children:
                item.addChild(self._node_item(child, approved))
            return item
        change = node.change
        item = QTreeWidgetItem(
            [
                printable(node.label),
                STATUS_WORDS.get(change.kind, str(change.kind)),
                mode_text(change).removeprefix("mode ").replace("->", "→"),
                human_bytes(change.new_size or 0) if change.new_size is not None else "",
            ]
        )
        item.setData(0, PATH, str(change.path))
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(
            0,
            Qt.CheckState.Checked if str(change.path) in approved else Qt.CheckState.Unchecked,
        )
        item.setForeground(1, accent(palette, STATUS_HUES.get(change.kind, BLUE)))
        if mode_text(change):
            item.setToolTip(2, f"Lands with {mode_text(change)}")
        tips = [printable(str(change.path))]
        if change.renamed_from is not None:
            tips.append(f"Moved from {printable(str(change.renamed_from))}")
        if str(change.path) in self.returned:
            font = item.font(0)
            font.setItalic(True)
            item.setFont(0, font)
            tips.append("Back from an undo: review it again")
        warning_icon = QApplication.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        warnings = self.warnings.get(change.path)
        if warnings:
            # Seen on the row, not only on hover; never ticked by "Approve all".
            item.setIcon(0, warning_icon)
            item.setForeground(0, accent(palette, AMBER))
            tips.append("Check this name: it " + "; it ".join(printable(w) for w in warnings))
        risky = self.risky.get(change.path)
        if risky:
            item.setIcon(0, warning_icon)
            item.setForeground(0, accent(palette, AMBER))
            tips.append("Can run code on this machine: " + "; ".join(printable(r) for r in risky))
        if change.problems:
            tips.append("Would be refused: " + "; ".join(printable(p) for p in change.problems))
            item.setForeground(0, accent(palette, RED))
            item.setBackground(0, wash(palette, RED))
        item.setToolTip(0, plain_tip("\n".join(tips)))
        return item

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
            item.setData(0, PATH, record.id)
            item.setDisabled(bool(record.undone_by or record.undo_of))
            self.history.addTopLevelItem(item)
        self._update_buttons()

    def _show_diff(self, item: QTreeWidgetItem | None, _previous: object = None) -> None:
        if item is None:
            return
        value = item.data(0, PATH)
        if value is None:  # a folder row
            new = [Path(p) for p in item.data(0, NEW_FOLDERS) or ()]
            self.diff_view.show_change(
                [
                    f"warning: the name {printable(w)}"
                    for p in new
                    for w in self.warnings.get(p, ())
                ],
                Readable(
                    "New folders: they land with the files you tick in them."
                    if new
                    else "A folder: pick a file in it to see its change."
                ),
                "",
            )
            return
        path = Path(value)
        notes = [f"warning: the name {printable(w)}" for w in self.warnings.get(path, ())]
        notes += [f"runs code: {printable(r)}" for r in self.risky.get(path, ())]
        change = (
            next((c for c in self.changeset.changes if c.path == path), None)
            if (self.changeset)
            else None
        )
        if change is not None and change.problems:
            notes += [f"will be refused: {printable(p)}" for p in change.problems]
        self.diff_view.show_change(notes, self.readables.get(path), self.diffs.get(path, ""))

    # choices

    def _items(self) -> Iterator[QTreeWidgetItem]:
        """Every change's row (not the folder rows), top to bottom."""

        def walk(item: QTreeWidgetItem) -> Iterator[QTreeWidgetItem]:
            if item.data(0, PATH) is not None:
                yield item
            for i in range(item.childCount()):
                child = item.child(i)
                if child is not None:
                    yield from walk(child)

        for i in range(self.files.topLevelItemCount()):
            item = self.files.topLevelItem(i)
            if item is not None:
                yield from walk(item)

    def ticked(self) -> list[Path]:
        """The changes whose rows are ticked."""
        return [
            Path(item.data(0, PATH))
            for item in self._items()
            if item.checkState(0) == Qt.CheckState.Checked
        ]

    def approved(self) -> list[Path]:
        """What a commit takes: the ticked changes, and the new folders they are in."""
        paths: list[Path] = []
        for item in self._items():
            if item.checkState(0) != Qt.CheckState.Checked:
                continue
            paths.append(Path(item.data(0, PATH)))
            parent = item.parent()
            while parent is not None:
                paths.extend(Path(p) for p in parent.data(0, NEW_FOLDERS) or ())
                parent = parent.parent()
        return list(dict.fromkeys(paths))

    def item_for(self, path: Path) -> QTreeWidgetItem | None:
        for item in self._items():
            if item.data(0, PATH) == str(path):
                return item
        return None

    def _approve_all(self) -> None:
        """Ticks every change but those flagged (a name to check, code it could run): each
        of those the person ticks on their own, having looked at it; the status says so."""
        left = 0
        for item in self._items():
            path = Path(item.data(0, PATH))
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
        chosen = len(self.ticked())
        self.commit_button.setText(f"&Commit {files_label(chosen)}" if chosen else "&Commit")
        self.discard_button.setText(f"&Discard {files_label(chosen)}" if chosen else "&Discard")
        self.commit_button.setEnabled(bool(chosen))
        self.discard_button.setEnabled(bool(chosen))
        self.approve_all.setEnabled(next(self._items(), None) is not None)
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
            result = await asyncio.to_thread(
                self.review.commit, self.session, paths, reviewed, True, True
            )
        except AirlockError as e:
            self.status.setText(str(e))
            return None
        self.returned -= set(result.applied)
        self.committed.emit(result)
        await self.load()
        self._confirm_commit(result)
        return result

    def _confirm_commit(self, result: CommitResult) -> None:
        landed = [p for p in result.applied if p not in self._folders(result)]
        names = ", ".join(printable(Path(p).name) for p in landed[:4]) + (
            f" and {len(landed) - 4} more" if len(landed) > 4 else ""
        )
        text = f"Committed {files_label(len(landed))} to your files: {names}." if landed else ""
        if result.refused:
            refused = "; ".join(
                f"{printable(Path(p).name)}: {printable(why)}" for p, why in result.refused
            )
            text += f" Not committed: {refused}."
        self.last_commit = result.commit.id if result.commit and result.applied else None
        self._say(text.strip() or "Nothing was committed.", RED if result.refused else GREEN)
        self.banner_undo.setVisible(self.last_commit is not None)
        self.status.setText(
            f"Committed {files_label(len(landed))}" + ("; some refused" if result.refused else "")
        )

    @staticmethod
    def _folders(result: CommitResult) -> set[str]:
        if result.commit is None:
            return set()
        return {op.target for op in result.commit.operations if op.action is CommitAction.MKDIR}

    def _say(self, text: str, hue: Any) -> None:
        palette = self.banner.palette()
        palette.setColor(QPalette.ColorRole.Window, wash(self.palette(), hue))
        self.banner.setPalette(palette)
        self.banner_text.setText(text)
        self.banner.show()

    async def discard_selected(self) -> None:
        paths = self.ticked()
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

    async def undo_last(self) -> CommitResult | None:
        """The confirmation's Undo: the commit it reported."""
        if self.last_commit is None:
            return None
        return await self.undo(self.last_commit)

    async def undo_selected(self) -> CommitResult | None:
        item = self.history.currentItem() or self.history.topLevelItem(0)
        if item is None or item.isDisabled():
            return None
        return await self.undo(str(item.data(0, PATH)))

    async def undo(self, commit: str) -> CommitResult | None:
        """Undoes a commit; what it had committed comes back to the list, to review again."""
        try:
            result = await asyncio.to_thread(self.review.undo, commit)
        except AirlockError as e:
            self.status.setText(str(e))
            return None
        if commit == self.last_commit:
            self.last_commit = None
        self.returned |= set(result.returned)
        await self.load()
        back = len(result.returned)
        text = (
            f"Undone: {files_label(len(result.applied))} as before the commit."
            if result.applied
            else "Nothing was undone."
        )
        if back:
            text += f" {back} change{'' if back == 1 else 's'} back in the list to review again."
        if result.refused:
            kept = "; ".join(
                f"{printable(Path(p).name)}: {printable(why)}" for p, why in result.refused
            )
            text += (
                f" Not undone, because you changed it after the commit (your version was "
                f"kept): {kept}."
            )
        self._say(text, AMBER if result.refused else BLUE)
        self.banner_undo.hide()
        return result


def plain_tip(text: str) -> str:
    """A tooltip that shows `text` as it is: Qt takes a tooltip that looks like HTML for
    HTML, and an agent chooses file names (`<img src=…>`, `<b>approved</b>`)."""
    return "<p style='white-space:pre'>" + html.escape(text) + "</p>"


def _diffs(changeset: Changeset) -> tuple[dict[Path, str], dict[Path, Readable]]:
    return (
        {change.path: _diff_text(change) for change in changeset.changes},
        {change.path: _readable(change) for change in changeset.changes},
    )


def _readable(change: Change) -> Readable:
    try:
        return readable(change)
    except OSError as e:
        return Readable(f"Cannot show this change: {e}")


def _diff_text(change: Change) -> str:
    try:
        return "".join(diff(change))
    except OSError as e:
        return f"cannot show the difference: {e}\n"
