"""Run under an X server (xcb): opens every window and dialog of the desktop app, one at a
time, and prints for each its geometry, the screen's available geometry, and whether its
buttons and its "who asks" block are in view; with a directory, a screenshot of each
(`import -window root`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QRect, QSettings
from PySide6.QtWidgets import QApplication, QGroupBox, QPushButton, QWidget

from app.consent import ConsentRequest, RequestKind, new_request_id
from app.events import EventBus
from app.paths import Dirs
from app.profiles import ProfileCatalog
from ui.qt.consent import ConsentDialog, QtFrontEnd, Requester
from ui.qt.launch import LaunchDialog
from ui.qt.main_window import MainWindow
from ui.qt.review import Review, ReviewWindow
from ui.qt.settings import Settings, SettingsDialog
from ui.qt.welcome import WelcomeWindow


def upload(session: str = "5e55104d") -> ConsentRequest:
    """The largest dialog: an upload with findings and a preview."""
    return ConsentRequest(
        new_request_id(),
        session,
        "notes-organizer",
        RequestKind.UPLOAD,
        "paste.example:443",
        {
            "size": 18_240,
            "sha256": "9f2c" * 16,
            "mime": "text/csv",
            "method": "POST",
            "path": "/api/paste",
            "complete": False,
            "preview": "name,iban\\nAna,DE89 3704 0044 0532 0130 00\\n" * 8,
            "findings": [{"kind": "iban", "label": "an IBAN", "offset": 14 * i} for i in range(6)],
        },
        "I need to upload the table to share it with the team. " * 6,
        120,
    )


def requester(request: ConsentRequest) -> Requester:
    return Requester(
        request.profile,
        "Reads your notes and writes a summary.",
        "airlock-agent:bookworm",
        request.session,
        time.time() - 30,
    )


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


def report(name: str, window: QWidget, app: QApplication, shots: Path | None) -> dict[str, object]:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    area = window.screen().availableGeometry()
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
    if shots is not None:
        subprocess.run(["import", "-window", "root", str(shots / f"small-{name}.png")], check=True)
    return result


def main() -> None:
    shots = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    app = QApplication(["airlock"])
    state = Path(tempfile.mkdtemp())
    settings = Settings(QSettings(str(state / "settings.ini"), QSettings.Format.IniFormat))
    results = []

    window = MainWindow()
    window.show()
    results.append(report("main-window", window, app, shots))
    window.hide()

    dirs = Dirs(config=state / "config", state=state / "state", runtime=state / "run")
    dirs.ensure()
    review = ReviewWindow("5e55104d", Review(dirs, EventBus()), lambda coroutine: coroutine.close())
    review.show()
    results.append(report("review-window", review, app, shots))
    review.hide()

    # The longest "what it may do" of the shipped agents, a long path, and a launch under way.
    catalog = ProfileCatalog(state / "no-profiles")
    launch = LaunchDialog([catalog.load(name) for name, _ in catalog.available()])
    launch.select_profile("claude-code")
    launch.add_path(Path("/home/ana/" + "very-long-folder-name/" * 8 + "notes"))
    launch.add_path(state)
    launch.begin()
    launch.step("creating the container")
    launch.show()
    results.append(report("launch-dialog", launch, app, shots))
    launch.failed("image airlock-agent:claude-code is not in the engine", "Build it. " * 20)
    results.append(report("launch-dialog-failed", launch, app, shots))
    launch.hide()

    welcome = WelcomeWindow(tray=True)
    welcome.show()
    results.append(report("welcome-window", welcome, app, shots))
    welcome.hide()

    dialog = SettingsDialog(settings)
    dialog.show()
    results.append(report("settings-dialog", dialog, app, shots))
    dialog.hide()

    alone = ConsentDialog(upload(), requester(upload()), timeout=60, unlock_ms=0)
    alone.show()
    results.append(report("upload-dialog", alone, app, shots))
    alone.deny()

    # A picked path long enough to wrap many times: who asks keeps its size.
    request = ConsentRequest(
        new_request_id(),
        "5e55104d",
        "notes-organizer",
        RequestKind.FILE_OPEN,
        "Open notes",
        {"multiple": True},
        "",
        120,
    )
    picked = ConsentDialog(request, requester(request), timeout=60, unlock_ms=0)
    picked.show()
    picked._files_chosen(
        ["/home/ana/" + "a-rather-long-folder-name/" * 12 + f"n{i}.md" for i in range(12)]
    )
    results.append(report("long-path-dialog", picked, app, shots))
    picked.deny()

    front_end = QtFrontEnd(settings, requester)
    queue = front_end.queue
    for session in ("5e55104d", "0the4000", "5e55104d"):
        r = upload(session)
        d = ConsentDialog(r, requester(r), timeout=60, unlock_ms=0)
        queue.add(d)
    results.append(report("question-queue", queue, app, shots))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
