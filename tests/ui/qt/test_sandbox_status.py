"""Each session says whether its sandbox was verified, and if not why, in the sessions list
and the tray."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from app import weaker
from app.engine_kind import EngineKind
from app.events import Event, EventKind
from app.sandbox import Check
from app.store import SessionRecord, SessionState
from ui.qt.models import SessionsModel, summary
from ui.qt.tray import Tray

REFUSED = "refused: kernel: pid 1 Seccomp: expected 2, found 0"


class NoActions:
    def __getattr__(self, name: str) -> object:
        return lambda *args: None


def record(
    session: str, sandbox: str | None, state: SessionState = SessionState.RUNNING
) -> SessionRecord:
    return SessionRecord(
        session, "claude", "sha256:" + "a" * 64, None, "1:1", state, 0.0, sandbox=sandbox
    )


def test_the_sessions_list_shows_the_sandbox_check(qtbot: QtBot) -> None:
    model = SessionsModel()
    model.replace(
        [
            record("s1", "verified (52 checks)"),
            record("s2", None),
            record("s3", REFUSED, SessionState.EXITED),
        ]
    )
    column = SessionsModel.headers.index("Sandbox")

    shown = [model.data(model.index(row, column)) for row in range(3)]

    # Under the "Sandbox" heading the word is not said again.
    assert shown == ["verified (52 checks)", "checking…", REFUSED]


def test_the_tray_menu_shows_each_sessions_sandbox_check(qtbot: QtBot) -> None:
    tray = Tray(NoActions())  # type: ignore[arg-type]
    tray.update([record("s1", "verified (52 checks)")], 0, False, frozenset())

    menus = [a.menu() for a in tray.menu.actions() if a.menu() is not None]
    entries = [a.text() for a in menus[0].actions()]
    assert entries[0] == "Sandbox verified (52 checks)"
    assert not menus[0].actions()[0].isEnabled()


def test_the_activity_feed_says_why_a_session_was_refused() -> None:
    refused = Event(
        EventKind.SANDBOX_REFUSED,
        "s3",
        "s3",
        {"check": "kernel: pid 1 Seccomp", "expected": "2", "found": "0", "checks": 52},
    )
    assert summary(refused) == "refused: kernel: pid 1 Seccomp: expected 2, found 0"
    verified = Event(EventKind.SANDBOX_VERIFIED, "s1", "s1", {"checks": 52, "seconds": 0.01})
    assert summary(verified) == "sandbox verified (52 checks)"


def test_a_weaker_sandbox_is_shown_in_the_list_the_tray_and_the_feed(qtbot: QtBot) -> None:
    """A session the profile let run without its limits (app/weaker.py) says so wherever a
    verified one says "verified"."""
    podman = EngineKind("podman", "4.3.1", rootless=True, cgroup="1")
    failed = [Check("engine: pids limit", "64", "0")]
    text = weaker.summary(
        podman, [*failed, Check("engine: seccomp", "x", "x")], weaker.judge(failed, ("limits",))
    )
    model = SessionsModel()
    model.replace([record("s1", text)])
    shown = model.data(model.index(0, SessionsModel.headers.index("Sandbox")))
    assert shown == (
        "sandbox weaker than asked: rootless Podman 4.3.1 (cgroup v1) does not enforce memory, "
        "pids and CPU limits and ulimits (accepted by the profile: [sandbox] accept_weaker); "
        "1 of 2 checks passed"
    )
    tray = Tray(NoActions())  # type: ignore[arg-type]
    tray.update([record("s1", text)], 0, False, frozenset())
    menus = [a.menu() for a in tray.menu.actions() if a.menu() is not None]
    assert menus[0].actions()[0].text() == shown.capitalize()
    event = Event(
        EventKind.SANDBOX_VERIFIED,
        "s1",
        "s1",
        {"checks": 2, "weaker": ["limits"], "warning": weaker.warning(podman, ("limits",))},
    )
    assert summary(event) == f"sandbox {weaker.warning(podman, ('limits',))} (2 checks)"
