"""Every window and dialog of the desktop app, filled with a believable day's content (three
agents, their events, traffic, grants and audit records): what the screenshots show and what
the keyboard walk goes through."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QWidget

from app.audit import AuditRecord, Verification
from app.consent import ConsentRequest, RequestKind, new_request_id
from app.events import Event, EventBus, EventKind
from app.grants import Access, Grant, Lifetime, Mode, NetworkGrant
from app.paths import Dirs
from app.profiles import ProfileCatalog
from app.store import SessionRecord, SessionState
from ui.qt.consent import ConsentDialog, QtFrontEnd, Requester
from ui.qt.launch import LaunchDialog
from ui.qt.main_window import MainWindow
from ui.qt.review import Review, ReviewWindow
from ui.qt.settings import Settings, SettingsDialog
from ui.qt.welcome import WelcomeWindow

MAIN_TABS = ("sessions", "activity", "network", "grants", "audit")


def upload(session: str = "5e55104d") -> ConsentRequest:
    """The largest dialog: an upload with findings and a preview."""
    return ConsentRequest(
        new_request_id(),
        session,
        "notes-organizer",
        RequestKind.UPLOAD,
        "paste.example:443",
        {
            "size": 18_240,
            "sha256": "9f2c" * 16,
            "mime": "text/csv",
            "method": "POST",
            "path": "/api/paste",
            "complete": False,
            "preview": "name,iban\\nAna,DE89 3704 0044 0532 0130 00\\n" * 8,
            "findings": [{"kind": "iban", "label": "an IBAN", "offset": 14 * i} for i in range(6)],
        },
        "I need to upload the table to share it with the team. " * 6,
        120,
    )


def file_open(session: str = "5e55104d") -> ConsentRequest:
    return ConsentRequest(
        new_request_id(),
        session,
        "notes-organizer",
        RequestKind.FILE_OPEN,
        "Open notes",
        {"multiple": True},
        "To summarise this week's meeting notes.",
        120,
    )


def requester(request: ConsentRequest) -> Requester:
    return Requester(
        request.profile,
        "Reads your notes and writes a summary.",
        "airlock-agent:bookworm",
        request.session,
        time.time() - 30,
    )


def consent(request: ConsentRequest) -> ConsentDialog:
    return ConsentDialog(request, requester(request), timeout=60, unlock_ms=0)


def day(now: float) -> tuple[list[SessionRecord], list[Event], list[Grant | NetworkGrant]]:
    sessions = [
        SessionRecord(
            "5e55104d",
            "notes-organizer",
            "airlock-agent:bookworm",
            "c1",
            "p",
            SessionState.RUNNING,
            now - 1500,
            sandbox="verified",
        ),
        SessionRecord(
            "0b7e4000",
            "coder",
            "airlock-agent:claude-code",
            "c2",
            "p",
            SessionState.RUNNING,
            now - 420,
            sandbox="verified",
        ),
        SessionRecord(
            "9a1c2f30",
            "researcher",
            "airlock-agent:bookworm",
            "c3",
            "p",
            SessionState.STARTING,
            now - 3,
        ),
    ]
    events: list[Event] = []
    for step in range(110):
        t = now - 110 + step
        events.append(
            Event(
                EventKind.NET_REQUEST,
                "5e55104d" if step % 3 else "0b7e4000",
                ("api.github.com:443", "pypi.org:443", "paste.example:443")[step % 3],
                {
                    "method": "GET",
                    "path": "/repos/…",
                    "decision": "allowed",
                    "bytes_up": 400 + 300 * (step % 7),
                    "bytes_down": 2000 + 900 * ((step * 5) % 11),
                },
                t,
            )
        )
    for kind, session, subject, details in (
        (EventKind.SESSION_STARTED, "5e55104d", "notes-organizer", {}),
        (
            EventKind.REQUEST_ASKED,
            "5e55104d",
            "/home/ana/notes",
            {"asks": "open files", "timeout": 60},
        ),
        (
            EventKind.REQUEST_ANSWERED,
            "5e55104d",
            "/home/ana/notes",
            {"verdict": "allow", "by": "dialog", "lifetime": "session"},
        ),
        (EventKind.SESSION_OUTPUT, "0b7e4000", "stdout", {"text": "Running tests… 42 passed"}),
        (
            EventKind.NET_REFUSED,
            "0b7e4000",
            "tracker.example:443",
            {"decision": "refused", "reason": "not in profile"},
        ),
    ):
        events.append(Event(kind, session, subject, details, now - 5))
    grants: list[Grant | NetworkGrant] = [
        Grant(
            "g1",
            Path("/home/ana/notes"),
            Mode.READ,
            Lifetime.SESSION,
            "5e55104d",
            "notes-organizer",
            now - 1400,
        ),
        Grant(
            "g2",
            Path("/home/ana/src/airlock"),
            Mode.READ_WRITE,
            Lifetime.SESSION,
            "0b7e4000",
            "coder",
            now - 400,
        ),
        NetworkGrant(
            "g3", "pypi.org", 443, Access.CONNECT, True, Lifetime.ALWAYS, None, "coder", now - 9000
        ),
    ]
    return sessions, events, grants


def audit(now: float) -> list[AuditRecord]:
    return [
        AuditRecord(seq, now - 60 + seq, "5e55104d", kind, subject, {}, "0" * 64, f"{seq:064x}")
        for seq, (kind, subject) in enumerate(
            [
                ("session.started", "notes-organizer"),
                ("grant.added", "/home/ana/notes"),
                ("request.answered", "paste.example:443"),
                ("net.request", "api.github.com:443"),
            ]
            * 4
        )
    ]


def main_window() -> MainWindow:
    now = time.time()
    window = MainWindow()
    sessions, events, grants = day(now)
    window.set_sessions(sessions)
    window.add_events(events)
    window.set_grants(grants)
    window.set_audit(audit(now), Verification(16, 1, "ab12" * 16, None))
    return window


@dataclass
class Shown:
    """One view to show: a window, and what to do before it is looked at."""

    name: str
    window: QWidget
    prepare: Callable[[], None] = lambda: None
    done: Callable[[], None] = lambda: None


def views(state: Path, settings: Settings) -> Iterator[Shown]:
    """Every window and dialog, one at a time (each is hidden before the next is made)."""
    window = main_window()
    for index, tab in enumerate(MAIN_TABS):
        yield Shown(f"main-{tab}", window, lambda i=index: window.tabs.setCurrentIndex(i))
    window.hide()

    dirs = Dirs(config=state / "config", state=state / "state", runtime=state / "run")
    dirs.ensure()
    review = ReviewWindow("5e55104d", Review(dirs, EventBus()), lambda coroutine: coroutine.close())
    yield Shown("review-window", review)
    review.hide()

    # The longest "what it may do" of the shipped agents, a long path, and a launch under way.
    catalog = ProfileCatalog(state / "no-profiles")
    launch = LaunchDialog([catalog.load(name) for name, _ in catalog.available()])
    launch.select_profile("claude-code")
    launch.add_path(Path("/home/ana/" + "very-long-folder-name/" * 8 + "notes"))
    launch.add_path(state)

    def under_way() -> None:
        launch.begin()
        launch.step("creating the container")

    yield Shown("launch-dialog", launch, under_way)
    yield Shown(
        "launch-dialog-failed",
        launch,
        lambda: launch.failed(
            "image airlock-agent:claude-code is not in the engine", "Build it. " * 20
        ),
    )
    launch.hide()

    welcome = WelcomeWindow(tray=True)
    yield Shown("welcome-window", welcome)
    welcome.hide()

    dialog = SettingsDialog(settings)
    yield Shown("settings-dialog", dialog)
    dialog.hide()

    alone = consent(upload())
    yield Shown("upload-dialog", alone, done=alone.deny)

    # A picked path long enough to wrap many times: who asks keeps its size.
    picked = consent(file_open())
    yield Shown(
        "long-path-dialog",
        picked,
        lambda: picked._files_chosen(
            ["/home/ana/" + "a-rather-long-folder-name/" * 12 + f"n{i}.md" for i in range(12)]
        ),
        picked.deny,
    )

    front_end = QtFrontEnd(settings, requester)
    queue = front_end.queue
    dialogs = [consent(upload(s)) for s in ("5e55104d", "0b7e4000", "5e55104d")]
    for dialog in dialogs:
        queue.add(dialog)
    yield Shown("question-queue", queue, done=lambda: queue.deny_agent())
    for dialog in dialogs:
        dialog.deny()


def settings_at(path: Path) -> Settings:
    return Settings(QSettings(str(path), QSettings.Format.IniFormat))
