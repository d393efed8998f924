"""The review windows, one per session: opened when asked or when a session the app launched
ends with changes, and reloaded when the session's staged changes change."""

from __future__ import annotations

from app.review import Review
from ui.qt.background import Background
from ui.qt.overview import Overview
from ui.qt.review import ReviewWindow


class Reviews:
    def __init__(self, review: Review, background: Background, overview: Overview) -> None:
        self.review = review
        self.background = background
        self.overview = overview
        self.windows: dict[str, ReviewWindow] = {}

    def open(self, session: str) -> ReviewWindow:
        window = self.windows.get(session)
        if window is None:
            agent = self.overview.agent_of(session)
            window = ReviewWindow(session, self.review, self.background.run_soon, agent=agent)
            self.windows[session] = window
        window.show()
        window.raise_()
        self.background.spawn(window.load())
        return window

    def changes_changed(self, session: str) -> None:
        window = self.windows.get(session)
        if window is not None and window.isVisible():
            self.background.spawn(window.load())
