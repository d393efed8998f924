"""Windows that fit: each window and dialog opens within the screen's available geometry, down
to 1024x600, at the size it would like or smaller; short lists are as tall as their rows."""

from __future__ import annotations

from PySide6.QtCore import QRect
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QTableView, QWidget


def available(window: QWidget) -> QRect:
    """The screen's area not taken by panels, where `window` is (or will be) shown."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    return screen.availableGeometry()


def fit_on_screen(window: QWidget, width: int | None = None, height: int | None = None) -> None:
    """Sizes `window` to `width` x `height` (default: what its layout would like), no larger
    than the available area and no smaller than its minimum, and moves it inside that area.
    The content of a window that fits nowhere else scrolls: its minimum stays small."""
    area = available(window)
    hint = window.sizeHint()
    want_w = width if width is not None else max(hint.width(), window.width())
    want_h = height if height is not None else max(hint.height(), window.height())
    w = max(min(want_w, area.width()), min(window.minimumWidth(), area.width()))
    h = max(min(want_h, area.height()), min(window.minimumHeight(), area.height()))
    window.resize(w, h)
    frame = window.frameGeometry()
    x = min(max(frame.x(), area.x()), area.right() - frame.width() + 1)
    y = min(max(frame.y(), area.y()), area.bottom() - frame.height() + 1)
    if frame.width() > area.width():
        x = area.x()
    if frame.height() > area.height():
        y = area.y()
    if window.isWindow():
        window.move(x, y)


def fit_rows(view: QTableView, rows: int, least: int = 3, most: int = 8) -> None:
    """Keeps a short list (the running agents) as tall as its rows, from `least` to `most`,
    leaving the rest of the page to what is below it; a longer one scrolls."""
    shown = min(max(rows, least), most)
    frame = 2 * view.frameWidth()
    view.setMaximumHeight(
        view.horizontalHeader().sizeHint().height()
        + shown * view.verticalHeader().defaultSectionSize()
        + frame
    )
