"""A change shown two ways: readable (in words, with the changed words marked) and the raw
unified diff; every colour taken from the palette, so light, dark and high-contrast themes
all read."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtGui import (
    QColor,
    QFont,
    QFontDatabase,
    QPalette,
    QSyntaxHighlighter,
    QTextCharFormat,
)
from PySide6.QtWidgets import QPlainTextEdit, QTabWidget, QTextBrowser, QWidget

from app.readable import Readable, RowKind

GREEN = QColor(40, 160, 70)
RED = QColor(210, 50, 50)
BLUE = QColor(40, 110, 220)
AMBER = QColor(200, 130, 0)


def blend(base: QColor, hue: QColor, amount: float) -> QColor:
    """`hue` laid over `base` at `amount` (0..1)."""
    return QColor.fromRgbF(
        base.redF() + (hue.redF() - base.redF()) * amount,
        base.greenF() + (hue.greenF() - base.greenF()) * amount,
        base.blueF() + (hue.blueF() - base.blueF()) * amount,
    )


def accent(palette: QPalette, hue: QColor) -> QColor:
    """Text in `hue` that stays readable on the palette's base: the theme's text colour
    pulled toward the hue (darker on a light theme, lighter on a dark one)."""
    return blend(palette.color(QPalette.ColorRole.Text), hue, 0.55)


def wash(palette: QPalette, hue: QColor, strong: bool = False) -> QColor:
    """A background in `hue` under the palette's text."""
    return blend(palette.color(QPalette.ColorRole.Base), hue, 0.42 if strong else 0.16)


class DiffHighlighter(QSyntaxHighlighter):
    """Unified-diff colouring: additions, deletions, hunk headers, file headers."""

    def __init__(self, document: Any, palette: QPalette) -> None:
        super().__init__(document)
        self._formats: dict[str, QTextCharFormat] = {}
        for prefix, hue in (("+", GREEN), ("-", RED), ("@", BLUE)):
            fmt = QTextCharFormat()
            fmt.setForeground(palette.color(QPalette.ColorRole.Text))
            fmt.setBackground(wash(palette, hue))
            self._formats[prefix] = fmt
        header = QTextCharFormat()
        header.setFontWeight(QFont.Weight.Bold)
        self._formats["h"] = header

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


class DiffView(QTabWidget):
    """Tab "Readable": the change in words and, for text, its lines with old and new line
    numbers, the changed words marked. Tab "Raw": the unified diff."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("diffView")
        self.readable = QTextBrowser()
        self.readable.setObjectName("readable")
        self.readable.setOpenLinks(False)
        self.raw = QPlainTextEdit()
        self.raw.setObjectName("diff")
        self.raw.setReadOnly(True)
        self.raw.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.raw.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.highlighter = DiffHighlighter(self.raw.document(), self.palette())
        self.addTab(self.readable, "&Readable")
        self.addTab(self.raw, "Ra&w diff")

    def show_change(self, notes: list[str], change: Readable | None, raw: str) -> None:
        """`notes`: warnings shown above both views (untrusted text made printable)."""
        self.raw.setPlainText("".join(f"{n}\n" for n in notes) + ("\n" if notes else "") + raw)
        self.readable.setHtml(self._html(notes, change))

    def clear_change(self) -> None:
        self.raw.setPlainText("")
        self.readable.setHtml("")

    def _html(self, notes: list[str], change: Readable | None) -> str:
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.Text).name()
        faint = palette.color(QPalette.ColorRole.PlaceholderText).name()
        parts = [f"<div style='color:{text}'>"]
        for note in notes:
            parts.append(
                f"<p style='background-color:{wash(palette, AMBER).name()}'>"
                f"⚠ {html.escape(note)}</p>"
            )
        if change is None:
            return "".join(parts) + "</div>"
        parts.append(f"<p>{html.escape(change.summary)}</p>")
        if change.rows:
            fixed = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()
            parts.append(
                f"<table cellspacing='0' cellpadding='3' width='100%' "
                f"style='font-family:\"{html.escape(fixed)}\"'>"
            )
            for row in change.rows:
                if row.kind is RowKind.GAP:
                    parts.append(
                        f"<tr><td colspan='4' style='color:{faint}'>⋯ unchanged lines</td></tr>"
                    )
                    continue
                hue = {RowKind.ADDED: GREEN, RowKind.REMOVED: RED}.get(row.kind)
                line_bg = f"background-color:{wash(palette, hue).name()};" if hue else ""
                mark = {RowKind.ADDED: "+", RowKind.REMOVED: "−"}.get(row.kind, "")
                body = "".join(
                    (
                        f"<span style='background-color:{wash(palette, hue, True).name()};"
                        f"font-weight:bold'>{html.escape(p.text)}</span>"
                        if p.changed and hue
                        else html.escape(p.text)
                    )
                    for p in row.pieces
                )
                parts.append(
                    f"<tr style='{line_bg}'>"
                    f"<td align='right' style='color:{faint}'>{row.old or ''}</td>"
                    f"<td align='right' style='color:{faint}'>{row.new or ''}</td>"
                    f"<td>{mark}</td>"
                    f"<td width='100%' style='white-space:pre-wrap'>{body}</td></tr>"
                )
            parts.append("</table>")
        return "".join(parts) + "</div>"
