"""The Launch dialog (ui/qt/launch.py): nothing preselected the first time, then the last
choice; what the chosen agent may do; read-only or read-write per path with the agent's
default; no launch with nothing granted or a path that is gone, with the reason on show; and
a launch's progress, or its error with what to do next, against a real supervisor and
engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QDialog
from pytestqt.qtbot import QtBot

from app.consent import ConsentBroker
from app.grants import Mode
from app.profiles import Profile, ProfileCatalog, parse_profile
from app.sessions import Supervisor
from tests.support import profile_text
from tests.ui.qt.conftest import until
from ui.launch_plan import LaunchChoice
from ui.qt import settings as options
from ui.qt.app import Desktop, build_desktop
from ui.qt.launch import LaunchDialog
from ui.qt.main_window import LaunchDialog as OldHome
from ui.qt.settings import Settings


def shipped() -> list[Profile]:
    catalog = ProfileCatalog(Path("/nonexistent"))
    return [catalog.load(name) for name, _ in catalog.available()]


def agent(name: str, command: list[str], extra: str = "", image: str = "") -> str:
    text = profile_text(image or "airlock-agent:bookworm", command, extra=extra).replace(
        'name = "test-agent"', f'name = "{name}"'
    )
    parse_profile(text, f"{name}.toml")
    return text


def install(supervisor: Supervisor, name: str, text: str) -> None:
    supervisor.dirs.user_profiles.mkdir(parents=True, exist_ok=True)
    (supervisor.dirs.user_profiles / f"{name}.toml").write_text(text)


def test_the_dialog_moved_to_its_own_module_and_the_old_import_still_works() -> None:
    assert OldHome is LaunchDialog


def test_launch_is_refused_with_its_reason_until_an_agent_and_existing_paths_are_chosen(
    qtbot: QtBot, tmp_path: Path
) -> None:
    dialog = LaunchDialog(shipped())
    qtbot.addWidget(dialog)
    dialog.show()
    launched: list[LaunchChoice] = []
    dialog.launch_requested.connect(lambda: launched.append(dialog.choice()))
    # Nothing is preselected: no agent is anyone's default.
    assert dialog.profile.currentIndex() == -1 and dialog.current_profile() is None
    assert not dialog.go.isEnabled() and dialog.why.text() == "Choose an agent first."
    assert dialog.why.isVisible()

    dialog.select_profile("notes-organizer")
    assert not dialog.go.isEnabled()
    assert dialog.why.text().startswith("Add at least one file or folder")

    kept, gone = tmp_path / "notes", tmp_path / "gone"
    kept.mkdir()
    gone.mkdir()
    dialog.add_path(kept)
    dialog.add_path(gone)
    assert dialog.go.isEnabled() and not dialog.why.isVisible()

    # A path that vanished after it was added: Launch checks again and refuses, saying why.
    gone.rmdir()
    QTest.mouseClick(dialog.go, Qt.MouseButton.LeftButton)
    assert launched == []
    assert not dialog.go.isEnabled()
    assert dialog.why.text() == f"{gone} does not exist: remove it or add it again."
    dialog.files.setCurrentItem(dialog.item_for(gone))
    QTest.mouseClick(dialog.remove_button, Qt.MouseButton.LeftButton)
    assert dialog.paths() == [kept] and dialog.go.isEnabled()
    dialog.profile.setFocus()
    QTest.keyClick(dialog.profile, Qt.Key.Key_Return)  # Launch is the default button
    assert launched == [LaunchChoice("notes-organizer", ((kept, Mode.READ_WRITE),))]

    # Removing the last path turns Launch off again.
    dialog.remove_path(kept)
    assert not dialog.go.isEnabled() and dialog.why.text().startswith("Add at least one")


def test_the_dialog_shows_what_the_chosen_agent_may_do(qtbot: QtBot) -> None:
    dialog = LaunchDialog(shipped())
    qtbot.addWidget(dialog)
    assert dialog.power_rows() == {}  # only "Choose an agent…" before one is chosen
    dialog.select_profile("claude-code")
    rows = dialog.power_rows()
    assert "registry.npmjs.org" in rows["Network"]
    assert "api.anthropic.com with your “anthropic” key" in rows["Network"]
    assert rows["Limits"] == "4 GiB memory · 2 CPUs · 1024 processes"
    assert rows["Time limit"] == "Stopped after 8 h"
    assert rows["Uploads"].startswith("Asks you before more than 64 KiB")
    assert "may ask you for more" in rows["Files"]
    assert rows["Changes"] == "Every change waits for your review"
    assert dialog.description.text().startswith("Claude Code")
    dialog.select_profile("notes-organizer")
    rows = dialog.power_rows()
    assert rows["Network"] == "None: it has no network at all"
    assert rows["Limits"] == "256 MiB memory · 0.5 CPUs · 64 processes"
    assert rows["Time limit"] == "Stopped after 10 min"


def test_each_path_gets_the_agents_default_access_and_keeps_what_the_user_set(
    qtbot: QtBot, tmp_path: Path
) -> None:
    reader = parse_profile(agent("reader", ["true"]), "reader.toml")
    writer = parse_profile(agent("writer", ["true"], 'grant_mode = "rw"'), "writer.toml")
    dialog = LaunchDialog([reader, writer])
    qtbot.addWidget(dialog)
    a, b = tmp_path / "a", tmp_path / "b.txt"
    a.mkdir()
    b.write_text("b\n")
    dialog.select_profile("reader")
    dialog.add_path(a)
    assert dialog.mode_of(a) is Mode.READ
    dialog.select_profile("writer")  # not set by hand: follows the agent
    assert dialog.mode_of(a) is Mode.READ_WRITE
    dialog.add_path(b)
    assert dialog.mode_of(b) is Mode.READ_WRITE
    # The user picks read-only for b in its own drop-down (the keyboard's way).
    access = dialog.access(b)
    access.setFocus()
    QTest.keyClick(access, Qt.Key.Key_Up)
    assert dialog.mode_of(b) is Mode.READ
    dialog.select_profile("reader")
    assert dialog.mode_of(a) is Mode.READ and dialog.mode_of(b) is Mode.READ
    dialog.select_profile("writer")
    assert dialog.mode_of(a) is Mode.READ_WRITE and dialog.mode_of(b) is Mode.READ
    assert dialog.choice() == LaunchChoice("writer", ((a, Mode.READ_WRITE), (b, Mode.READ)))


@pytest.fixture
def as_the_app(qapp: QApplication) -> Iterator[None]:
    """As the app runs (ui/qt/app.py `application`): closing its last window does not quit."""
    before = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    yield
    qapp.setQuitOnLastWindowClosed(before)


@pytest.mark.docker
def test_a_launch_shows_its_progress_grants_each_path_as_chosen_and_is_remembered(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    tmp_path: Path,
    as_the_app: None,
) -> None:
    install(
        supervisor,
        "lister",
        agent("lister", ["sh", "-c", "exec sleep 60"], 'grant_mode = "rw"'),
    )
    project, spec = tmp_path / "project", tmp_path / "spec.md"
    project.mkdir()
    spec.write_text("# Spec\n")

    async def scenario() -> None:
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings)
        desktop.start()
        try:
            await launch_and_reopen(desktop)
        finally:
            await desktop.close()

    async def launch_and_reopen(desktop: Desktop) -> None:
        dialog = desktop.launch_agent()
        assert dialog.profile.currentIndex() == -1  # no last choice yet: nothing chosen
        dialog.select_profile("lister")
        dialog.add_path(project)
        dialog.add_path(spec)
        dialog.set_mode(spec, Mode.READ)
        seen: list[list[str]] = []
        step = dialog.step

        def record(name: str) -> None:
            step(name)
            seen.append([label.text() for label in dialog.stage_labels])

        dialog.step = record  # type: ignore[method-assign]
        closed: list[tuple[int, list[str]]] = []  # the dialog goes once it closes
        dialog.finished.connect(
            lambda result: closed.append((result, [x.text() for x in dialog.stage_labels]))
        )
        QTest.mouseClick(dialog.go, Qt.MouseButton.LeftButton)
        assert dialog.launching and not dialog.form.isEnabled() and not dialog.go.isEnabled()
        assert dialog.progress.isVisible()
        await until(lambda: closed, 60, "the dialog to close once it runs")
        # Every stage was shown running, in order, and all were done at the end.
        assert seen[0][0] == "…  Check the agent's image"
        assert seen[-2] == [
            "✓  Check the agent's image",
            "✓  Prepare the files you picked",
            "✓  Create its container",
            "…  Start it and check its sandbox",
        ]
        assert seen[-1][3] == "✓  Start it and check its sandbox"  # the self-check passed
        assert closed[0][0] == QDialog.DialogCode.Accepted
        assert [text[0] for text in closed[0][1]] == ["✓"] * 4
        message = desktop.window.statusBar().currentMessage()
        assert message.startswith("lister runs as session "), message
        session = message.rsplit(" ", 1)[1]
        grants = {g.path: g.mode for g in supervisor.store.session_grants(session, time.time())}
        assert grants == {project: Mode.READ_WRITE, spec: Mode.READ}
        desktop.stop_session(session)
        await until(lambda: session not in desktop.runs, 30, "the session to end")

        # The next time (also after a restart: the settings file), the same choice is filled in.
        again = Settings(QSettings(settings._store.fileName(), QSettings.Format.IniFormat))
        assert LaunchChoice.decode(again.get(options.LAST_LAUNCH)) == LaunchChoice(
            "lister", ((project, Mode.READ_WRITE), (spec, Mode.READ))
        )
        reopened = desktop.launch_agent()
        assert reopened.profile.currentText() == "lister"
        assert reopened.paths() == [project, spec]
        assert reopened.mode_of(project) is Mode.READ_WRITE
        assert reopened.mode_of(spec) is Mode.READ
        assert reopened.go.isEnabled()
        reopened.reject()

    run(scenario(), timeout=120)


@pytest.mark.docker
def test_a_failed_launch_says_why_and_what_to_do_next_in_the_dialog(
    run: Callable[..., object],
    supervisor: Supervisor,
    settings: Settings,
    tmp_path: Path,
    as_the_app: None,
) -> None:
    install(supervisor, "unbuilt", agent("unbuilt", ["true"], image="airlock-agent:not-built-here"))
    folder = tmp_path / "folder"
    folder.mkdir()

    async def scenario() -> None:
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings)
        desktop.start()
        try:
            dialog = desktop.launch_agent("unbuilt", [folder])
            QTest.mouseClick(dialog.go, Qt.MouseButton.LeftButton)
            await until(lambda: dialog.error.isVisible(), 30, "the error")
            text = dialog.error.text()
            assert "image airlock-agent:not-built-here is not in the engine" in text, text
            assert "What to do: Build the image in a terminal with `airlock image build " in text
            assert "--agent not-built-here`" in text
            assert dialog.stage_labels[0].text() == "✗  Check the agent's image"
            assert dialog.isVisible() and not dialog.launching and dialog.form.isEnabled()
            assert dialog.go.isEnabled() and dialog.go.text() == "&Try again"
            assert "unbuilt did not start" in desktop.window.statusBar().currentMessage()
            assert not desktop.runs
            dialog.reject()
            await asyncio.sleep(0)
        finally:
            await desktop.close()

    run(scenario(), timeout=60)
