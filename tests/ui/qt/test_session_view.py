"""The sessions' history in the desktop app: a running session's "what it can see now" follows
a revoke, and once it ended it stays listed with its status, duration and output; the texts
the detail pane shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.consent import ConsentBroker
from app.grants import Lifetime, Mode
from app.history import GrantUse, HostUse, SessionActivity, SessionSummary
from app.sessions import Supervisor
from app.store import SessionRecord, SessionState
from tests.ui.qt.conftest import until
from tests.ui.qt.test_desktop_session import install_profile
from ui.history_text import duration_text, summary_text
from ui.qt.app import build_desktop
from ui.qt.session_view import HistoryPanel
from ui.qt.settings import Settings


def record(live: bool = False) -> SessionRecord:
    return SessionRecord(
        "abcd1234",
        "writer",
        "sha256:0",
        None,
        "1:1",
        SessionState.RUNNING if live else SessionState.EXITED,
        1000.0,
        None if live else 1125.0,
        None if live else 2,
        None if live else "exited with status 2",
    )


def summary(live: bool = False, waiting: int = 0) -> SessionSummary:
    return SessionSummary(
        record=record(live),
        activity=SessionActivity(
            requests=3, refused=1, bytes_up=2048, hosts=(HostUse("api.example", 3, 1, 2048),)
        ),
        grants=(
            GrantUse(Path("/home/u/notes"), Mode.READ, "/home/u/notes", Lifetime.SESSION, True),
        ),
        commits=1,
        committed=2,
        waiting=waiting,
        output_kept=10,
        output_cut=0,
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, ""), (5.4, "5 s"), (125, "2 min 05 s"), (7260, "2 h 01 min")]
)
def test_durations_read_as_people_say_them(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


def test_the_summary_says_what_it_read_changed_and_sent() -> None:
    text = summary_text(summary())
    assert "exited with status 2" in text
    assert "after 2 min 05 s" in text
    assert "/home/u/notes  (read only)" in text
    assert "2 file(s) committed to your files in 1 commit(s)" in text
    assert "3 network request(s), 1 refused; 2.0 KiB sent" in text
    assert "api.example: 3 request(s), 1 refused, 2.0 KiB sent" in text


def test_an_ended_session_with_changes_waiting_offers_the_review_not_forgetting(
    qtbot: object,
) -> None:
    panel = HistoryPanel()
    panel.set_ended([record()])
    assert panel.model.rowCount() == 1 and not panel.empty.isVisibleTo(panel)
    panel.detail.show_session(summary(waiting=2), "hello\n", None)
    assert panel.detail.review_button.isEnabled()
    assert "2 waiting" in panel.detail.review_button.text()
    assert panel.detail.forget_button.isEnabled()  # the core refuses it, with the reason
    assert not panel.detail.tabs.isTabEnabled(2)  # nothing to see once it ended
    panel.set_ended([])  # forgotten: its detail goes too
    assert panel.detail.session is None and panel.empty.isVisibleTo(panel)


@pytest.mark.docker
def test_what_it_sees_follows_a_revoke_and_the_ended_session_stays_listed(
    run: Callable[..., object], supervisor: Supervisor, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    secret = tmp_path / "plan.txt"
    secret.write_text("the plan\n")
    waits = (
        f"echo started; while [ -e {secret} ]; do sleep 0.1; done; echo the plan is gone; "
        f"while [ -e {folder}/a.txt ]; do sleep 0.1; done; exit 4"
    )
    install_profile(supervisor, "history-agent", ["sh", "-c", waits])

    async def scenario() -> None:
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings)
        desktop.start()
        desktop.window.show()
        detail = desktop.window.history.detail
        try:
            session = await desktop.launch("history-agent", [str(folder), str(secret)])
            started = time.time()
            await until(lambda: desktop.window.sessions.rows, 60, "the running session")
            desktop.show_detail(session)
            await until(lambda: "started" in detail.output.toPlainText(), 30, "its output")
            sight = detail.sight.toPlainText()
            assert f"{secret}  (read only, at {secret} inside" in sight
            assert f"{folder}  (read only" in sight
            assert "memory: 256.0 MiB" in sight and "processes: 64" in sight
            assert detail.tabs.isTabEnabled(2) and not detail.forget_button.isEnabled()

            grant = next(g for g in supervisor.store.session_grants(session) if g.path == secret)
            desktop.revoke_grant(grant.id)
            await until(
                lambda: str(secret) not in detail.sight.toPlainText(),
                30,
                "the revoked file to leave what it sees",
            )
            assert f"{folder}  (read only" in detail.sight.toPlainText()  # still running
            await until(lambda: "gone" in detail.output.toPlainText(), 10, "the agent to see it")

            folder_grant = next(
                g for g in supervisor.store.session_grants(session) if g.path == folder
            )
            desktop.revoke_grant(folder_grant.id)  # and with that, the agent ends

            # It noticed, and ended: listed among the ended ones, detail and all.
            history = desktop.window.history
            await until(lambda: history.model.rows, 30, "the ended session in the history")
            row = history.model.rows[0]
            assert row.id == session
            assert history.model.cell(row, 4) == "exited with status 4"
            assert history.model.cell(row, 3).endswith(" s")
            history.view.selectRow(0)
            await until(
                lambda: "exited with status 4" in detail.title.text(),
                10,
                "the ended session's detail",
            )
            assert detail.output.toPlainText() == "started\nthe plan is gone\n"
            summary = detail.summary.toPlainText()
            assert "exited with status 4" in summary and f"{secret}" in summary
            assert not detail.tabs.isTabEnabled(2) and detail.forget_button.isEnabled()
            assert time.time() - started < 60

            detail.forget_button.click()
            await until(lambda: not history.model.rows, 10, "the forgotten session to go")
            assert supervisor.store.session(session) is None
        finally:
            await desktop.close()

    run(scenario())
