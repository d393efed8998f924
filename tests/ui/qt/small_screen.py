"""Run under an X server (xcb): opens every window and dialog of the desktop app, one at a
time, in each colour scheme asked for, and prints for each its geometry, the screen's available
geometry, and whether its buttons and its "who asks" block are in view; with a directory, a
screenshot of the screen with each (`SIZE-SCHEME-NAME.png`).

    python -m tests.ui.qt.small_screen DIR light,dark,high-contrast
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QRect
from PySide6.QtWidgets import QApplication, QGroupBox, QPushButton, QWidget

from tests.ui.qt.gallery import settings_at, views
from ui.qt import theme


def in_view(widget: QWidget, window: QWidget, area: QRect) -> bool:
    """Shown, not clipped by a scroll area or its window, and on the screen."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    rect = QRect(widget.mapToGlobal(widget.rect().topLeft()), widget.size())
    if widget.visibleRegion().boundingRect().size() != widget.size():
        return False
    return area.contains(rect) and QRect(
        window.mapToGlobal(window.rect().topLeft()), window.size()
    ).contains(rect)


def settle(app: QApplication) -> None:
    for _ in range(8):
        app.processEvents()
        time.sleep(0.01)


def report(name: str, window: QWidget, app: QApplication, shot: Path | None) -> dict[str, object]:
    settle(app)
    screen = window.screen()
    area = screen.availableGeometry()
    frame = window.frameGeometry()
    buttons = [b for b in window.findChildren(QPushButton) if b.isVisible()]
    who = [g for g in window.findChildren(QGroupBox) if g.title() == "Who asks" and g.isVisible()]
    result = {
        "name": name,
        "window": [frame.x(), frame.y(), frame.width(), frame.height()],
        "area": [area.x(), area.y(), area.width(), area.height()],
        "fits": area.contains(frame),
        "buttons": {b.text(): in_view(b, window, area) for b in buttons},
        "who": [
            in_view(g, window, area) and g.height() >= g.minimumSizeHint().height() for g in who
        ],
    }
    if shot is not None:
        screen.grabWindow(0).save(str(shot))  # the whole screen, as a user would see it
    return result


def main() -> None:
    shots = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    schemes = [theme.Scheme(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "light").split(",")]
    app = QApplication(["airlock"])
    state = Path(tempfile.mkdtemp())
    settings = settings_at(state / "settings.ini")
    results = []
    for scheme in schemes:
        theme.apply(app, scheme)
        size = app.primaryScreen().size()
        prefix = f"{size.width()}x{size.height()}-{scheme}"
        for view in views(state, settings):
            view.prepare()
            view.window.show()
            shot = shots / f"{prefix}-{view.name}.png" if shots is not None else None
            results.append({"scheme": str(scheme), **report(view.name, view.window, app, shot)})
            view.done()
            view.window.hide()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
