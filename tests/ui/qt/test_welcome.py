"""The first-run window (ui/qt/welcome.py): shown at the desktop app's first start for this
user and never again once dismissed (also after a restart), reopened from the tray's menu,
saying in plain words what Airlock does; its demo button fills the Launch dialog with the
demo agent and a folder of sample notes, and the demo runs for real on the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app.consent import ConsentBroker
from app.demo import NOTES, demo_folder
from app.grants import Mode
from app.sessions import Supervisor
from tests.ui.qt.conftest import until
from ui.qt import settings as options
from ui.qt.app import build_desktop
from ui.qt.launch import LaunchDialog
from ui.qt.settings import Settings
from ui.qt.welcome import WelcomeWindow

pytestmark = pytest.mark.docker


@pytest.fixture
def as_the_app(qapp: QApplication) -> Iterator[None]:
    """As the app runs (ui/qt/app.py `application`): closing its last window does not quit."""
    before = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    yield
    qapp.setQuitOnLastWindowClosed(before)


def visible_launch_dialogs() -> list[LaunchDialog]:
    return [
        w for w in QApplication.topLevelWidgets() if isinstance(w, LaunchDialog) and w.isVisible()
    ]


def test_the_welcome_shows_at_the_first_start_only_and_reopens_from_the_tray(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    as_the_app: None,
) -> None:
    async def scenario() -> None:
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings)
        desktop.start()
        try:
            window = desktop.greet()
            assert isinstance(window, WelcomeWindow) and window.isVisible()
            said = window.text()
            for words in (
                "Agents run in a sandbox",
                "Only the files you pick",
                "Network through Airlock",
                "Changes wait for your review",
                "Where Airlock is",
                "~/AirlockDemo/notes",
            ):
                assert words in said, words
            QTest.mouseClick(window.close_button, Qt.MouseButton.LeftButton)
            assert not window.isVisible()
            assert settings.get(options.WELCOME_SEEN)
            assert desktop.greet() is None
            # The tray's menu brings it back.
            assert desktop.tray is not None
            entry = next(a for a in desktop.tray.menu.actions() if a.text() == "Welcome and help…")
            entry.trigger()
            assert window.isVisible()
            QTest.keyClick(window, Qt.Key.Key_Escape)
            assert not window.isVisible()
        finally:
            await desktop.close()

        # After a restart (a new app on the same settings file) it stays away.
        again = Settings(QSettings(settings._store.fileName(), QSettings.Format.IniFormat))
        restarted = build_desktop(supervisor, ConsentBroker(supervisor.bus), again)
        try:
            assert restarted.greet() is None
        finally:
            await restarted.close()

    run(scenario(), timeout=60)


def test_the_demo_from_the_welcome_window_runs_on_sample_notes_and_waits_for_review(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    tmp_path: Path,
    as_the_app: None,
) -> None:
    async def scenario() -> None:
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings)
        desktop.home = tmp_path
        desktop.start()
        try:
            window = desktop.greet()
            assert window is not None
            QTest.mouseClick(window.demo_button, Qt.MouseButton.LeftButton)
            assert not window.isVisible() and settings.get(options.WELCOME_SEEN)
            folder = demo_folder(tmp_path)
            # Another test's dialog may still be on screen: wait for the one on the demo folder.
            ours = lambda: [d for d in visible_launch_dialogs() if d.paths() == [folder]]  # noqa: E731
            await until(ours, 10, "the Launch dialog on the demo folder")
            dialog = ours()[0]
            assert sorted(p.name for p in folder.iterdir()) == sorted(NOTES)
            assert dialog.profile.currentText() == "notes-organizer"
            assert dialog.paths() == [folder] and dialog.mode_of(folder) is Mode.READ_WRITE
            assert dialog.go.isEnabled()
            # Run as root, the tests' agents run as another uid: let it write (its staging).
            folder.chmod(0o777)
            QTest.mouseClick(dialog.go, Qt.MouseButton.LeftButton)
            await until(
                lambda: any(
                    r.changeset is not None and r.changeset.changes
                    for r in desktop.reviews.values()
                ),
                90,
                "the demo's summary in the review window",
            )
            review = next(iter(desktop.reviews.values()))
            assert review.item_for(folder / "summary.md") is not None
            assert not (folder / "summary.md").exists()  # it waits for the review
        finally:
            await desktop.close()

    run(scenario(), timeout=120)
