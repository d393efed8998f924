"""The desktop app against a real session on the Docker engine: a file granted in the consent
dialog (picked in its file dialog with the keyboard) appears inside the running container, a
denial grants nothing, and the Revoke button in the grants table takes the file away at once.
Then the review window commits, undoes and discards the agent's staged writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QLineEdit, QMessageBox, QPushButton

from app.consent import ConsentBroker, ConsentRequest, RequestKind, new_request_id
from app.events import Event, EventKind
from app.grants import Grant, GrantRequest, Lifetime, Mode
from app.profiles import parse_profile
from app.sessions import Supervisor
from tests.support import profile_text
from tests.ui.qt.conftest import until
from ui.qt import settings as options
from ui.qt.app import Desktop, build_desktop
from ui.qt.main_window import revoke_tip
from ui.qt.settings import Settings

pytestmark = pytest.mark.docker

WATCH = (
    "last=; while :; do "
    "if ls /run/airlock/doc/*/note.txt >/dev/null 2>&1; then s=present; else s=absent; fi; "
    '[ "$s" != "$last" ] && echo "$s" && last=$s; sleep 0.1; done'
)


def install_profile(supervisor: Supervisor, name: str, command: list[str]) -> None:
    text = profile_text("airlock-agent:bookworm", command).replace(
        'name = "test-agent"', f'name = "{name}"'
    )
    parse_profile(text, f"{name}.toml")
    supervisor.dirs.user_profiles.mkdir(parents=True, exist_ok=True)
    (supervisor.dirs.user_profiles / f"{name}.toml").write_text(text)


def lines(events: list[Event], session: str) -> list[str]:
    return [
        str(e.details.get("text"))
        for e in events
        if e.kind is EventKind.SESSION_OUTPUT and e.session == session
    ]


async def seen_inside(supervisor: Supervisor, session: str) -> bool:
    """Whether the granted note is in the container, asked through the engine from the host
    (not what the agent reports)."""
    record = supervisor.store.session(session)
    assert record is not None and record.container_id
    container = await asyncio.to_thread(supervisor.engine.containers.get, record.container_id)
    result = await asyncio.to_thread(
        container.exec_run, ["sh", "-c", "ls /run/airlock/doc/*/note.txt"]
    )
    return int(result.exit_code) == 0


def test_grant_in_the_dialog_then_revoke_in_the_grants_table(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    settings.set(options.UNLOCK_DELAY, 300)
    install_profile(supervisor, "doc-watcher", ["sh", "-c", WATCH])
    note = tmp_path / "host" / "note.txt"
    note.parent.mkdir()
    note.write_text("for the agent\n")
    events: list[Event] = []
    supervisor.bus.attach(events.append)

    async def scenario() -> None:
        broker = ConsentBroker(supervisor.bus)
        desktop = build_desktop(supervisor, broker, settings)
        desktop.start()
        desktop.window.show()
        try:
            await grant_and_revoke(desktop, broker)
        finally:
            await desktop.close()

    async def grant_and_revoke(desktop: Desktop, broker: ConsentBroker) -> None:
        session = await desktop.launch("doc-watcher", [])
        await until(lambda: lines(events, session) == ["absent"], 60, "the agent to start")
        await until(lambda: desktop.window.sessions.rows, what="the session in the window")
        assert desktop.tray is not None and desktop.tray.state == "running"

        async def ask() -> ConsentRequest:
            request = ConsentRequest(
                new_request_id(),
                session,
                "doc-watcher",
                RequestKind.FILE_OPEN,
                "open a file",
                {"title": "Pick a note", "mode": "ro"},
                "I need the note to summarise it",
            )
            return request

        # Denied with Escape: nothing is granted.
        request = await ask()
        asked = asyncio.ensure_future(broker.ask(request))
        await until(lambda: desktop.front_end.dialog(request.id) is not None)
        assert desktop.tray.state == "attention"
        dialog = desktop.front_end.dialog(request.id)
        await until(lambda: not dialog.locked)
        QTest.keyClick(dialog, Qt.Key.Key_Escape)
        assert not (await asked).allowed

        # Granted: Alt+C opens the file dialog, the path is typed, Enter grants.
        request = await ask()
        asked = asyncio.ensure_future(broker.ask(request))
        await until(lambda: desktop.front_end.dialog(request.id) is not None)
        dialog = desktop.front_end.dialog(request.id)
        await until(lambda: not dialog.locked)
        QTest.keyClick(dialog, Qt.Key.Key_C, Qt.KeyboardModifier.AltModifier)
        await until(lambda: dialog.file_dialog is not None and dialog.file_dialog.isVisible())
        name = dialog.file_dialog.findChild(QLineEdit, "fileNameEdit")
        QTest.keyClicks(name, str(note))
        QTest.keyClick(name, Qt.Key.Key_Return)
        await until(lambda: dialog.paths == (note,), what="the pick")
        assert dialog.summary.text() == f"doc-watcher will be able to read:\n  •  {note}"
        QTest.keyClick(dialog.focusWidget(), Qt.Key.Key_Return)
        answer = await asked
        assert answer.allowed and answer.paths == (note,) and answer.mode is Mode.READ
        inside = await supervisor.files.open_files(
            session, answer.paths, answer.mode, answer.lifetime, answer.until
        )
        assert str(inside[0]).startswith("/run/airlock/doc/")
        await until(
            lambda: lines(events, session)[-1:] == ["present"],
            20,
            "the file to appear in the container",
        )

        # The grants table shows it with a Revoke button; one click takes it away.
        grant = next(g for g in supervisor.store.session_grants(session) if g.path == note)
        await until(
            lambda: desktop.window.revoke_button(grant.id) is not None,
            what="the grant in the table",
        )
        desktop.window.tabs.setCurrentIndex(3)
        await asyncio.sleep(0.2)
        desktop.window.grab().save(str(artifacts / "main-window-grants.png"))
        # The click asks first, saying what the agent loses; Cancel keeps it.
        QTest.mouseClick(desktop.window.revoke_button(grant.id), Qt.MouseButton.LeftButton)
        box = desktop.window.revoke_box
        await until(box.isVisible, what="the confirmation")
        assert f"doc-watcher · {session[:4]} loses the file {note}" in box.informativeText()
        assert "Undo gives it back" in box.informativeText()
        box.button(QMessageBox.StandardButton.Cancel).click()
        await asyncio.sleep(0.3)
        assert await seen_inside(supervisor, session)
        QTest.mouseClick(desktop.window.revoke_button(grant.id), Qt.MouseButton.LeftButton)
        box = desktop.window.revoke_box
        await until(box.isVisible, what="the confirmation")
        QTest.mouseClick(box.findChild(QPushButton, "revokeYes"), Qt.MouseButton.LeftButton)
        await until(
            lambda: lines(events, session)[-1:] == ["absent"],
            20,
            "the file to vanish from the container",
        )
        assert not await seen_inside(supervisor, session)  # asked from the host, not the agent
        assert lines(events, session) == ["absent", "present", "absent"]
        await until(lambda: desktop.window.revoke_button(grant.id) is None, what="the row to go")
        assert "no longer see" in desktop.window.statusBar().currentMessage()

        # Revoked at once; Undo (offered for a few seconds) gives it back to the running agent.
        undo = desktop.window.undo_bar
        assert undo.isVisible() and undo.offered == [grant.id]
        QTest.mouseClick(undo.button, Qt.MouseButton.LeftButton)
        await until(
            lambda: lines(events, session)[-1:] == ["present"],
            20,
            "the file to come back into the container",
        )
        assert await seen_inside(supervisor, session)
        await until(lambda: desktop.window.revoke_button(grant.id) is not None, what="the row")
        assert "Gave back" in desktop.window.statusBar().currentMessage()
        assert lines(events, session) == ["absent", "present", "absent", "present"]

        # The feed has it all, filterable by session and kind.
        desktop.window.tabs.setCurrentIndex(1)
        panel = desktop.window.activity
        panel.show_session(session)
        panel.kind_box.setCurrentIndex(panel.kind_box.findData("grant"))
        await asyncio.sleep(0.3)
        kinds = {panel.filter.index(r, 2).data() for r in range(panel.filter.rowCount())}
        assert panel.session_box.currentText() == f"doc-watcher · {session[:4]}"
        assert kinds == {"grant.added", "grant.revoked"}
        desktop.window.grab().save(str(artifacts / "main-window-activity-filtered.png"))

        # Stop from the sessions tab.
        desktop.window.tabs.setCurrentIndex(0)
        desktop.window.sessions_view.selectRow(0)
        QTest.mouseClick(desktop.window.stop_button, Qt.MouseButton.LeftButton)
        await until(lambda: session not in desktop.runs, 30, "the session to end")
        await until(lambda: not desktop.window.sessions.rows, 10, "the list to empty")

    run(scenario(), timeout=180)


def test_review_window_commits_undoes_and_discards(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.md").write_text("- [ ] milk\n- [ ] bread\n")
    (notes / "keep.md").write_text("untouched\n")
    # Run as root, the tests' agents run as nobody: let that uid write (into its staging).
    notes.chmod(0o777)
    (notes / "todo.md").chmod(0o666)
    install_profile(
        supervisor,
        "writer",
        [
            "sh",
            "-c",
            f'cd {notes} && printf -- "- [x] milk\\n- [ ] bread\\n- [ ] eggs\\n" '
            '> todo.md && echo "# Summary" > summary.md && echo new > scratch.md',
        ],
    )

    async def scenario() -> None:
        broker = ConsentBroker(supervisor.bus)
        desktop = build_desktop(supervisor, broker, settings)
        desktop.start()
        try:
            await review(desktop)
        finally:
            await desktop.close()

    async def review(desktop: Desktop) -> None:
        grants = (GrantRequest(notes, Mode.READ_WRITE),)
        session = await desktop.launch_request("writer", grants)
        # When a session the app launched ends with staged changes, the review window opens.
        await until(
            lambda: (
                session in desktop.reviews
                and desktop.reviews[session].changeset is not None
                and desktop.reviews[session].changeset.changes
            ),
            60,
            "the review window",
        )
        window = desktop.reviews[session]
        assert (notes / "todo.md").read_text() == "- [ ] milk\n- [ ] bread\n"
        names = sorted(
            window.files.topLevelItem(i).text(0) for i in range(window.files.topLevelItemCount())
        )
        assert names == ["scratch.md", "summary.md", "todo.md"]
        todo = window.item_for(notes / "todo.md")
        window.files.setCurrentItem(todo)
        assert "+- [ ] eggs" in window.viewer.toPlainText()
        assert not window.commit_button.isEnabled()  # nothing approved yet
        todo.setCheckState(0, Qt.CheckState.Checked)
        window.item_for(notes / "summary.md").setCheckState(0, Qt.CheckState.Checked)
        await asyncio.sleep(0.1)
        window.grab().save(str(artifacts / "review-window-offscreen.png"))
        result = await window.commit_selected()
        assert result is not None and len(result.applied) == 2, window.status.text()
        assert (notes / "todo.md").read_text().endswith("- [ ] eggs\n")
        assert (notes / "summary.md").exists() and not (notes / "scratch.md").exists()
        assert window.files.topLevelItemCount() == 1  # scratch.md is left
        assert window.history.topLevelItemCount() == 1
        window.history.setCurrentItem(window.history.topLevelItem(0))
        undone = await window.undo_selected()
        assert undone is not None
        assert (notes / "todo.md").read_text() == "- [ ] milk\n- [ ] bread\n"
        assert not (notes / "summary.md").exists()
        # Not dropped: the undone changes are back in the list (the session has ended).
        assert window.item_for(notes / "todo.md") is not None
        assert window.item_for(notes / "summary.md") is not None
        await window.discard([notes / "scratch.md"])
        assert not (notes / "scratch.md").exists()
        assert (notes / "keep.md").read_text() == "untouched\n"

    run(scenario(), timeout=180)


def test_revoke_says_before_the_click_that_a_read_write_folder_stops_its_session(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("x\n")

    def tip(path: Path, mode: Mode) -> str:
        return revoke_tip(Grant("g1", path, mode, Lifetime.SESSION, "s1", None, 0.0))

    assert "its session stops" in tip(folder, Mode.READ_WRITE)
    for path, mode in ((folder, Mode.READ), (note, Mode.READ_WRITE), (note, Mode.READ)):
        assert tip(path, mode) == f"Take {path} away from the agent now"
