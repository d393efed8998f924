"""What the person hears while the window is away: what the agents ran into (refusals, held
uploads, denials) on the status line, and as desktop notifications — those and the waiting
questions — while the window is hidden."""

from __future__ import annotations

from typing import Any

from app.consent import ConsentRequest
from app.events import Event, EventBudget, EventKind
from ui.notices import Notices
from ui.qt import settings as options
from ui.qt.background import Background
from ui.qt.main_window import MainWindow
from ui.qt.settings import Settings


class Alerts:
    def __init__(
        self,
        window: MainWindow,
        settings: Settings,
        background: Background,
        notifier: Any | None = None,
    ) -> None:
        self.window = window
        self.settings = settings
        self.background = background
        self.notifier = notifier
        # What the agents ran into (ui/notices.py), counted in plain Python; only strings
        # reach Qt. Notifications for them come at most this often, whatever the agents do.
        self.notices = Notices()
        self._pace = EventBudget(burst=3, rate=1 / 20)

    def events(self, batch: list[Event]) -> None:
        for event in batch:
            text = self.notices.counted(event)
            # A question answered in this app: the person answering knows.
            if text and event.details.get("by") not in ("dialog", "notification"):
                self._notice(event, text)

    def _notice(self, event: Event, text: str) -> None:
        """On the status line, and while the window is hidden as a notification (a held
        upload's own dialog is its notification)."""
        line = f"{event.session}: {text}" if event.session else text
        self.background.say(line)
        if (
            self.notifier is not None
            and not self.window.isVisible()
            and self.settings.get(options.NOTIFY)
            and event.kind is not EventKind.REQUEST_ASKED
            and self._pace.take()
        ):
            self.background.spawn(self.notifier.notify("Airlock", line, []))

    def asked(self, request: ConsentRequest) -> None:
        if self.window.isVisible() or not self.settings.get(options.NOTIFY):
            return
        if self.notifier is not None:
            self.background.spawn(self.notifier.request(request))
