"""The upload dialog's preview: the start of what would leave, and the body around each
finding (a secret-looking string, a piece of a granted file), marked and scrolled into view,
with Previous/Next when there are several."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtGui import QFontDatabase, QPalette, QShowEvent, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.text import block


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a finding's text sits in the preview's plain text."""

    start: int
    end: int
    title: str


def shown_part(escaped: object) -> str:
    """One part of the proxy's preview as the pane shows it: the proxy escapes everything
    but printable ASCII, and "\\n" is a line break."""
    return block(escaped.replace("\\n", "\n")) if isinstance(escaped, str) else ""


def compose(
    start: object, parts: Sequence[object], titles: Sequence[str]
) -> tuple[str, list[Mark]]:
    """The pane's text: the upload's start, then each excerpt under a line naming its
    finding; and where each finding is in that text."""
    text = shown_part(start)
    marks: list[Mark] = []
    for excerpt in parts:
        if not isinstance(excerpt, Mapping):
            continue
        number = excerpt.get("finding")
        offset = excerpt.get("offset")
        title = (
            titles[number] if isinstance(number, int) and 0 <= number < len(titles) else "a finding"
        )
        # (A finding's own title says where it was seen already.)
        where = f", near byte {offset}" if isinstance(offset, int) and "byte" not in title else ""
        text += f"\n\n──── {title}{where} ────\n" if text else f"──── {title}{where} ────\n"
        text += shown_part(excerpt.get("before"))
        match = shown_part(excerpt.get("match"))
        marks.append(Mark(len(text), len(text) + len(match), title))
        text += match + shown_part(excerpt.get("after"))
    return text, marks


class FindingsPreview(QWidget):
    """The preview pane; with findings, each one marked in the palette's highlight, the first
    scrolled into view when it shows, the others one click (or Alt+N / Alt+P) away."""

    def __init__(
        self,
        start: object,
        excerpts: object,
        titles: Sequence[str],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        parts: Sequence[Any] = excerpts if isinstance(excerpts, list) else []
        text, self.marks = compose(start, parts, titles)
        self.current = 0
        self.view = QPlainTextEdit()
        self.view.setObjectName("preview")
        self.view.setReadOnly(True)
        self.view.setPlainText(text)
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.view.setMaximumHeight(130 if self.marks else 110)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.view)
        self.position = QLabel()
        self.position.setObjectName("findingPosition")
        self.previous = QPushButton("&Previous finding")
        self.previous.setObjectName("previousFinding")
        self.next = QPushButton("&Next finding")
        self.next.setObjectName("nextFinding")
        row = QHBoxLayout()
        row.addWidget(self.position, 1)
        row.addWidget(self.previous)
        row.addWidget(self.next)
        layout.addLayout(row)
        several = len(self.marks) > 1
        self.previous.setVisible(several)
        self.next.setVisible(several)
        self.position.setVisible(bool(self.marks))
        self.previous.clicked.connect(lambda: self.go(self.current - 1))
        self.next.clicked.connect(lambda: self.go(self.current + 1))
        self._highlight()
        self._say()

    def _highlight(self) -> None:
        palette = self.view.palette()
        selections = []
        for mark in self.marks:
            selection = QTextEdit.ExtraSelection()
            cursor = QTextCursor(self.view.document())
            cursor.setPosition(mark.start)
            cursor.setPosition(max(mark.end, mark.start), QTextCursor.MoveMode.KeepAnchor)
            look = QTextCharFormat()
            look.setBackground(palette.color(QPalette.ColorRole.Highlight))
            look.setForeground(palette.color(QPalette.ColorRole.HighlightedText))
            selection.cursor = cursor
            selection.format = look
            selections.append(selection)
        self.view.setExtraSelections(selections)

    def marked_text(self) -> list[str]:
        """The text of each mark, as shown (for tests and screen readers' sake alike)."""
        whole = self.view.toPlainText()
        return [whole[m.start : m.end] for m in self.marks]

    def go(self, number: int) -> None:
        """Shows finding `number` (wrapping around), centred in the pane."""
        if not self.marks:
            return
        self.current = number % len(self.marks)
        mark = self.marks[self.current]
        cursor = QTextCursor(self.view.document())
        cursor.setPosition(mark.end)
        cursor.setPosition(mark.start, QTextCursor.MoveMode.KeepAnchor)
        self.view.setTextCursor(cursor)
        self.view.centerCursor()
        self._say()

    def _say(self) -> None:
        if self.marks:
            self.position.setText(
                f"Finding {self.current + 1} of {len(self.marks)}: {self.marks[self.current].title}"
            )

    def mark_in_view(self, number: int) -> bool:
        """Whether finding `number` is inside the pane's visible area."""
        mark = self.marks[number]
        cursor = QTextCursor(self.view.document())
        cursor.setPosition(mark.start)
        rect = self.view.cursorRect(cursor)
        return self.view.viewport().rect().contains(rect.center())

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.go(self.current)
