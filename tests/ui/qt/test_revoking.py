"""Revoking many grants at once from the desktop app, against a real session: "Revoke all of
its access" asks first, saying what the agent loses, takes its files out of the running
container at once (checked from the host), and Undo gives them back; the tray's "Revoke
everything" asks first too, naming each agent, what it loses and which one is stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QMessageBox, QPushButton

from app.consent import ConsentBroker
from app.grants import Access, Grant, Lifetime, Mode, NetworkGrant
from app.sessions import Supervisor
from tests.ui.qt.conftest import until
from tests.ui.qt.test_desktop_session import install_profile
from tests.ui.qt.test_welcome import as_the_app  # noqa: F401  (a fixture)
from ui.qt.app import build_desktop
from ui.qt.settings import Settings

pytestmark = pytest.mark.docker


async def inside(supervisor: Supervisor, session: str, path: Path) -> bool:
    """Whether `path` is there in the agent's container, asked through the engine from the
    host (not what the agent reports)."""
    record = supervisor.store.session(session)
    assert record is not None and record.container_id
    container = await asyncio.to_thread(supervisor.engine.containers.get, record.container_id)
    result = await asyncio.to_thread(container.exec_run, ["ls", str(path)])
    return int(result.exit_code) == 0


@pytest.mark.usefixtures("as_the_app")
def test_revoke_all_of_a_session_then_undo_and_what_revoke_everything_says(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    plan = tmp_path / "plan.txt"
    plan.write_text("the plan\n")
    install_profile(supervisor, "keeper", ["sleep", "600"])

    async def scenario() -> None:
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings)
        desktop.start()
        window = desktop.window
        window.show()
        try:
            session = await desktop.launch("keeper", [str(folder), str(plan)])
            agent = f"keeper · {session[:4]}"
            await until(lambda: window.sessions.rows, 60, "the running session")
            await until(lambda: supervisor.store.session(session).live, 30, "it to run")  # type: ignore[union-attr]
            host = NetworkGrant(
                "n-keeper",
                "api.test",
                443,
                Access.CONNECT,
                True,
                Lifetime.SESSION,
                session,
                None,
                time.time(),
            )
            supervisor.store.add_network_grant(host)
            assert await inside(supervisor, session, folder / "a.txt")
            assert await inside(supervisor, session, plan)

            # "Revoke all of its access" asks first, saying what it loses; Cancel keeps it.
            QTest.mouseClick(window.revoke_session_button, Qt.MouseButton.LeftButton)
            await until(lambda: desktop.revoker.box is not None, what="the confirmation")
            box = desktop.revoker.box
            assert box is not None and box.isVisible()
            assert box.text() == f"Revoke everything {agent} was given (3 grants)?"
            assert box.informativeText().startswith(
                f"•  {agent} loses 1 file, 1 folder and 1 host\n"
            )
            assert "stopped" not in box.informativeText()
            box.button(QMessageBox.StandardButton.Cancel).click()
            await asyncio.sleep(0.3)
            assert await inside(supervisor, session, plan)

            QTest.mouseClick(window.revoke_session_button, Qt.MouseButton.LeftButton)
            await until(lambda: desktop.revoker.box is not box, what="the confirmation again")
            box = desktop.revoker.box
            assert box is not None
            QTest.mouseClick(box.findChild(QPushButton, "revokeYes"), Qt.MouseButton.LeftButton)
            undo = window.undo_bar
            await until(undo.isVisible, 30, "the undo")
            assert not await inside(supervisor, session, folder / "a.txt")  # from the host
            assert not await inside(supervisor, session, plan)
            assert sorted(undo.offered)[-1] == "n-keeper" and len(undo.offered) == 3
            assert undo.label.text() == "Revoked 3 grants"
            assert window.tabs.currentWidget() is undo.parentWidget()  # where the Undo is
            assert supervisor.store.network_grant("n-keeper").revoked_at is not None  # type: ignore[union-attr]
            window.grab().save(str(artifacts / "main-window-revoked-session.png"))

            # Undo gives it all back to the running agent.
            QTest.mouseClick(undo.button, Qt.MouseButton.LeftButton)
            await until(lambda: "Gave back" in window.statusBar().currentMessage(), 30, "the undo")
            assert await inside(supervisor, session, folder / "a.txt")
            assert await inside(supervisor, session, plan)
            assert supervisor.store.network_grant("n-keeper").revoked_at is None  # type: ignore[union-attr]
            assert session in desktop.runs  # still running

            # The tray's "Revoke everything", the window hidden: its own window asks, naming
            # each agent, what it loses and that a read-write folder stops it.
            project = tmp_path / "project"
            project.mkdir()
            rw = Grant("g-rw", project, Mode.READ_WRITE, Lifetime.ALWAYS, None, "keeper", 0.0)
            later = Grant("g-later", plan, Mode.READ, Lifetime.ALWAYS, None, "other", 0.0)
            supervisor.store.add_grants([rw], session)
            supervisor.store.add_grants([later])
            window.hide()
            assert desktop.tray is not None
            entry = next(a for a in desktop.tray.menu.actions() if a.text() == "Revoke everything")
            asked = desktop.revoker.box
            entry.trigger()
            await until(lambda: desktop.revoker.box is not asked, what="the tray's confirmation")
            box = desktop.revoker.box
            assert box is not None and box.parent() is None and box.isVisible()
            assert box.windowTitle() == "Revoke everything?"
            assert box.text() == (
                "Revoke every grant (5)? 1 running agent loses every file, folder and host "
                "you gave."
            )
            assert box.informativeText().splitlines()[:2] == [
                f"•  {agent} loses 1 file, 2 folders and 1 host and is stopped (a read-write "
                "folder)",
                "•  also 1 grant for later sessions of a profile (no running agent has them now)",
            ]
            assert "cannot be taken back from a running agent" in box.informativeText()
            assert box.findChild(QPushButton, "revokeYes").text() == (
                "&Revoke everything and &stop the agent"
            )
            box.grab().save(str(artifacts / "confirm-revoke-everything.png"))
            box.button(QMessageBox.StandardButton.Cancel).click()
            await asyncio.sleep(0.3)
            assert supervisor.store.grant("g-rw").revoked_at is None  # type: ignore[union-attr]
            assert session in desktop.runs
        finally:
            await desktop.close()

    run(scenario(), timeout=150)
