"""A session whose file activity could not be watched in full says so in the sessions list
and the tray."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from app.store import SessionRecord, SessionState
from ui.qt.models import SessionsModel
from ui.qt.tray import Tray, tooltip


class NoActions:
    def __getattr__(self, name: str) -> object:
        return lambda *args: None


def record(session: str) -> SessionRecord:
    return SessionRecord(
        session, "claude", "sha256:" + "a" * 64, None, "1:1", SessionState.RUNNING, 0.0
    )


def test_the_sessions_list_shows_a_partly_unwatched_session(qtbot: QtBot) -> None:
    model = SessionsModel()
    model.replace([record("s1"), record("s2")])
    state = SessionsModel.headers.index("State")

    model.set_unwatched(frozenset({"s2"}))

    assert model.data(model.index(0, state)) == "running"
    assert model.data(model.index(1, state)) == "running · partly unwatched"


def test_the_tray_shows_a_partly_unwatched_session(qtbot: QtBot) -> None:
    assert tooltip(2, 0, 1) == "Airlock — 2 agents running · 1 partly unwatched"
    tray = Tray(NoActions())  # type: ignore[arg-type]
    tray.update([record("s1"), record("s2")], 0, False, frozenset({"s2"}))

    assert tray.icon.toolTip() == "Airlock — 2 agents running · 1 partly unwatched"
    titles = [a.text() for a in tray.menu.actions()]
    assert "claude  ·  s2  ·  partly unwatched" in titles
    assert "claude  ·  s1" in titles
