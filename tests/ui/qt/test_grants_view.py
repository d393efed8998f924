"""What the revoke confirmation says the agent loses, and the undo's few seconds."""

from __future__ import annotations

import time
from pathlib import Path

from pytestqt.qtbot import QtBot

from app.grants import Access, Grant, Lifetime, Mode, NetworkGrant
from app.store import SessionRecord, SessionState
from ui.qt.agents import AgentNames
from ui.qt.grants_view import UndoBar, loss_text, stops_agent


def names() -> AgentNames:
    known = AgentNames()
    known.learn(
        [SessionRecord("5e55104d", "codex", "i", None, "1:1", SessionState.RUNNING, time.time())]
    )
    return known


def test_the_confirmation_names_the_agent_what_it_loses_and_a_stop(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("x\n")
    rw_folder = Grant("g1", folder, Mode.READ_WRITE, Lifetime.SESSION, "5e55104d", None, 0.0)
    text = loss_text(rw_folder, names())
    assert text.startswith(f"codex · 5e55 loses the folder and everything in it {folder}")
    assert "session is stopped now" in text and stops_agent(rw_folder)
    ro_file = Grant("g2", note, Mode.READ, Lifetime.ALWAYS, None, "codex", 0.0)
    text = loss_text(ro_file, names())
    assert text.startswith(f"every session of codex loses the file {note} (read access)")
    assert "stopped" not in text and not stops_agent(ro_file)
    host = NetworkGrant(
        "n-1", "api.test", 443, Access.CONNECT, True, Lifetime.SESSION, "5e55104d", None, 0.0
    )
    assert "open connections there are cut" in loss_text(host, names())


def test_the_undo_is_offered_for_its_seconds_only(qtbot: QtBot) -> None:
    bar = UndoBar()
    qtbot.addWidget(bar)
    bar.offer("Revoked x", ["g1"], seconds=1)
    assert bar.isVisible() and bar.offered == ["g1"] and bar.button.text() == "&Undo (1)"
    qtbot.waitUntil(lambda: not bar.isVisible(), timeout=3000)
    assert bar.offered == []
    with qtbot.assertNotEmitted(bar.undo_requested):
        bar.button.click()
