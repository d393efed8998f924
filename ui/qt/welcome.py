"""The first-run window: what Airlock does, in plain words, and the demo one click away.

Shown once, when the desktop app starts for the first time for this user; from then on only
when asked for (the tray's "Welcome and help…"). The app's controller keeps whether it was
dismissed (ui/qt/settings.py WELCOME_SEEN) and starts the demo.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ui.qt.icons import icon
from ui.qt.launch import heading
from ui.qt.screen import fit_on_screen


def points(tray: bool) -> tuple[tuple[str, str], ...]:
    """(title, text) of each thing a new user should know; `tray`: a tray shows the icon."""
    where = (
        "Airlock stays in your panel's tray as a shield icon, also when its windows are "
        "closed. The icon changes when an agent needs you; its menu launches agents, shows "
        "what runs, takes access back, and quits Airlock."
        if tray
        else "Your desktop shows no tray icons, so Airlock keeps its main window open "
        "instead: closing it keeps Airlock running; start `airlock tray --show` to see it again."
    )
    return (
        (
            "Agents run in a sandbox",
            "Each AI agent works in a sealed container on this computer. It runs as you, "
            "without privileges, and cannot see your other files, programs or accounts.",
        ),
        (
            "Only the files you pick",
            "When you launch an agent you choose the files and folders it sees, and whether "
            "it may only read them or also write. While it runs it can ask for more: you "
            "decide each time, and you can take access back at any moment.",
        ),
        (
            "Network through Airlock",
            "An agent has no network of its own. It reaches only the hosts its profile "
            "names, through Airlock, which asks you before larger uploads. Your keys stay "
            "with Airlock: the agent never sees them.",
        ),
        (
            "Changes wait for your review",
            "An agent writes to copies. Your files change only when you approve the changes, "
            "and a commit can be undone.",
        ),
        ("Where Airlock is", where),
    )


class WelcomeWindow(QDialog):
    """What Airlock is doing, and an offer to try the demo agent on a folder of notes."""

    demo_requested = Signal()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        fit_on_screen(self)

    def __init__(self, tray: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("welcomeWindow")
        self.setWindowTitle("Welcome to Airlock")
        self.setWindowIcon(icon("airlock"))
        self.setMinimumWidth(520)
        content = QWidget()
        text = QVBoxLayout(content)
        text.setSpacing(4)
        self.texts: list[QLabel] = []
        for title, body in points(tray):
            label = heading(title)
            text.addWidget(label)
            words = QLabel(body)
            words.setTextFormat(Qt.TextFormat.PlainText)
            words.setWordWrap(True)
            text.addWidget(words)
            text.addSpacing(8)
            self.texts += [label, words]
        text.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # A Tab stop that scrolls: the margin leaves room for its focus ring (ui/qt/theme.py).
        scroll.setViewportMargins(2, 2, 2, 2)
        scroll.setWidget(content)
        scroll.setMinimumHeight(160)
        intro = QLabel(
            "Airlock lets AI agents work on your computer without handing them the keys to it."
        )
        intro.setWordWrap(True)
        demo = QLabel(
            "Try it: the demo agent reads a folder of sample notes (~/AirlockDemo/notes) and "
            "writes a summary, which waits for your review."
        )
        demo.setWordWrap(True)
        self.texts += [intro, demo]
        self.box = QDialogButtonBox()
        self.demo_button = QPushButton(icon("airlock"), "&Try the demo…")
        self.demo_button.setObjectName("demo")
        self.demo_button.setDefault(True)
        self.close_button = self.box.addButton("&Got it", QDialogButtonBox.ButtonRole.RejectRole)
        self.close_button.setObjectName("gotIt")
        self.box.addButton(self.demo_button, QDialogButtonBox.ButtonRole.AcceptRole)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("Welcome to Airlock"))
        layout.addWidget(intro)
        layout.addWidget(scroll, 1)
        layout.addWidget(demo)
        layout.addWidget(self.box)
        # The demo button joined the box after its own button: say the order outright.
        QWidget.setTabOrder(scroll, self.demo_button)
        QWidget.setTabOrder(self.demo_button, self.close_button)
        self.box.rejected.connect(self.reject)
        self.box.accepted.connect(self._demo)

    def text(self) -> str:
        """Everything it says, for tests and screen readers' summaries."""
        return "\n".join(label.text() for label in self.texts)

    def _demo(self) -> None:
        self.accept()
        self.demo_requested.emit()
