"""Every window and dialog of the desktop app, filled with a believable day's content (three
agents, their events, traffic, grants and audit records): what the screenshots show and what
the keyboard walk goes through."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tempfile
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
from app.history import GrantUse, HostUse, SessionActivity, SessionSummary
from app.paths import Dirs
from app.profiles import ProfileCatalog
from app.sessions.sight import HeldUpload, Reach, SeenPath, SessionSight
from app.staging import SessionStaging
from app.store import SessionRecord, SessionState
from ui.qt.consent import ConsentDialog, QtFrontEnd, Requester
from ui.qt.launch import LaunchDialog
from ui.qt.main_window import MainWindow
from ui.qt.review import Review, ReviewWindow
from ui.qt.settings import Settings, SettingsDialog
from ui.qt.welcome import WelcomeWindow

MAIN_TABS = ("sessions", "activity", "network", "grants", "audit")
# The Sessions tab's detail panes besides the summary: an ended session's output, and what a
# running one can see right now.
DETAIL_PANES = ("session-output", "session-sight")


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


def _net(
    kind: EventKind,
    session: str,
    method: str,
    host: str,
    path: str,
    decision: str,
    by: str,
    rule: str,
    up: int = 0,
    down: int = 0,
    **more: object,
) -> tuple[EventKind, str, str, dict[str, object]]:
    """One exchange as the egress proxy logs it (app/egress/records.py `details`)."""
    return (
        kind,
        session,
        f"{host}:443",
        {
            "method": method,
            "host": host,
            "port": 443,
            "path": path,
            "status": 200 if decision == "allow" else 403,
            "bytes_up": up,
            "bytes_down": down,
            "decision": decision,
            "rule": rule,
            "reason": "" if decision == "allow" else more.pop("reason", "refused"),
            **({"decided_by": by} if by else {}),
            **more,
        },
    )


NOTES, CODER, RESEARCHER, WRITER = "5e55104d", "0b7e4000", "9a1c2f30", "c4d2e9a1"


def traffic() -> list[tuple[EventKind, str, str, dict[str, object]]]:
    """A working morning through the proxy: mostly allowed by the profiles' rules, a few
    held, asked about, refused and cut, each with who decided."""
    request, refused = EventKind.NET_REQUEST, EventKind.NET_REFUSED
    out = []
    for step in range(96):
        if step % 4 == 0:
            up, down = 3_000 + 700 * (step % 5), 9_000 + 800 * (step % 7)
            out.append(
                _net(
                    request, CODER, "POST", "api.anthropic.com", "/v1/messages", "allow",
                    "policy", "route:anthropic", up, down, route="anthropic",
                )
            )  # fmt: skip
        elif step % 4 == 1:
            package = ("requests", "httpx", "rich")[step % 3]
            out.append(
                _net(
                    request, CODER, "GET", "pypi.org", f"/simple/{package}/", "allow", "policy",
                    "allow[1] pypi.org:443", 420, 6_000 + 1_300 * (step % 11),
                )
            )  # fmt: skip
        else:
            out.append(
                _net(
                    request, NOTES, "GET", "api.github.com", "/repos/ana/notes/issues?page=…",
                    "allow", "grant", "grant:g3", 380, 2_400 + 900 * ((step * 5) % 11),
                    grants=["g3"],
                )
            )  # fmt: skip
    paste, other = "ask[0] paste.example:443", "ask[2] *.example:443"
    iban = [{"kind": "iban", "label": "an IBAN", "offset": 14}]
    wheel = "/packages/…/rich-13.7.whl"
    out += [
        _net(
            refused, CODER, "CONNECT", "tracker.example", "", "deny", "policy", "not-listed",
            reason="not in the profile",
        ),
        _net(
            request, NOTES, "POST", "paste.example", "/api/paste", "allow", "user", paste,
            18_240, 312, held=True, findings=[],
        ),
        _net(
            refused, NOTES, "POST", "paste.example", "/api/paste", "deny", "user", paste,
            held=True, findings=iban, reason="you refused the upload",
        ),
        _net(
            refused, RESEARCHER, "GET", "telemetry.example", "/v2/collect", "deny", "user", other,
            asked=True, reason="you said no",
        ),
        _net(
            request, RESEARCHER, "GET", "arxiv.org", "/abs/2406.01234", "allow", "user",
            "ask[1] arxiv.org:443", 310, 48_200, asked=True,
        ),
        _net(
            refused, RESEARCHER, "GET", "scholar.example", "/search?q=…", "deny", "timeout",
            other, asked=True, reason="no answer in time",
        ),
        _net(
            refused, CODER, "GET", "files.pythonhosted.org", wheel, "deny", "user",
            "grant-revoked", 410, 81_000, reason="the grant was revoked: the connection was cut",
        ),
    ]  # fmt: skip
    return out


def ended(now: float) -> list[SessionRecord]:
    """The morning's finished sessions, latest first."""
    return [
        SessionRecord(
            WRITER,
            "notes-organizer",
            "airlock-agent:bookworm",
            None,
            "p",
            SessionState.EXITED,
            now - 5_400,
            now - 4_980,
            0,
            "exited normally",
            "verified (52 checks)",
        ),
        SessionRecord(
            "7f3b0c55",
            "coder",
            "airlock-agent:claude-code",
            None,
            "p",
            SessionState.EXITED,
            now - 9_000,
            now - 7_100,
            143,
            "stopped by you",
            "verified (52 checks)",
        ),
        SessionRecord(
            "2d8e6a10",
            "researcher",
            "airlock-agent:gemini-cli",
            None,
            "p",
            SessionState.EXITED,
            now - 12_600,
            now - 12_560,
            1,
            "sandbox refused: kernel: pid 1 Seccomp: expected 2, found 0",
            "refused: kernel: pid 1 Seccomp: expected 2, found 0",
        ),
    ]


def ended_summary(record: SessionRecord) -> SessionSummary:
    """What the latest ended session read, changed and sent."""
    return SessionSummary(
        record,
        SessionActivity(
            requests=14,
            refused=1,
            bytes_up=24_600,
            bytes_down=61_300,
            hosts=(
                HostUse("api.github.com:443", 12, 0, 4_560, 58_700),
                HostUse("paste.example:443", 2, 1, 20_040, 2_600),
            ),
            reads=37,
            writes=3,
            questions=2,
        ),
        (
            GrantUse(Path("/home/ana/notes"), Mode.READ, "/work/notes", Lifetime.SESSION, False),
            GrantUse(
                Path("/home/ana/notes/summaries"),
                Mode.READ_WRITE,
                "/work/summaries",
                Lifetime.SESSION,
                False,
            ),
        ),
        commits=1,
        committed=1,
        waiting=2,
        output_kept=1_200,
        output_cut=0,
    )


OUTPUT = """\
Reading 37 notes in /work/notes …
  2026-11-30 standup.md
  2026-12-01 planning.md
  2026-12-02 retro.md
  … 34 more
Grouping by topic: releases (9), hiring (6), infrastructure (12), other (10)
Writing /work/summaries/week-48.md (2.1 KiB)
Writing /work/summaries/open-questions.md (0.8 KiB)
Updating /work/summaries/index.md
Asked for paste.example (upload of 18 KiB): refused
Done in 7 min 02 s.
"""


def running_sight(now: float) -> SessionSight:
    """What notes-organizer can see while it runs."""
    return SessionSight(
        NOTES,
        "notes-organizer",
        (
            SeenPath(Path("/home/ana/notes"), Mode.READ, "/work/notes", Lifetime.SESSION, None),
            SeenPath(
                Path("/home/ana/notes/summaries"),
                Mode.READ_WRITE,
                "/work/summaries",
                Lifetime.UNTIL,
                now + 3_600,
            ),
        ),
        (
            Reach("api.github.com", (443,), "you allowed it (always)"),
            Reach("paste.example", (443,), "asks first; larger uploads refused until 16:00"),
        ),
        (),
        (HeldUpload("paste.example:443", 18_240, now - 12),),
        (("memory", "1.0 GiB"), ("processes", "256"), ("time", "stopped after 2 h")),
    )


def day(now: float) -> tuple[list[SessionRecord], list[Event], list[Grant | NetworkGrant]]:
    sessions = [
        SessionRecord(
            NOTES,
            "notes-organizer",
            "airlock-agent:bookworm",
            "c1",
            "p",
            SessionState.RUNNING,
            now - 1500,
            sandbox="verified (52 checks)",
        ),
        SessionRecord(
            CODER,
            "coder",
            "airlock-agent:claude-code",
            "c2",
            "p",
            SessionState.RUNNING,
            now - 420,
            sandbox="verified (52 checks)",
        ),
        SessionRecord(
            RESEARCHER,
            "researcher",
            "airlock-agent:bookworm",
            "c3",
            "p",
            SessionState.STARTING,
            now - 3,
        ),
    ]
    happened = traffic()
    events = [
        Event(kind, session, subject, details, now - len(happened) + step)
        for step, (kind, session, subject, details) in enumerate(happened)
    ]
    for kind, session, subject, details in (
        (EventKind.SESSION_STARTED, NOTES, "notes-organizer", {}),
        (
            EventKind.REQUEST_ASKED,
            NOTES,
            "/home/ana/notes",
            {"asks": "open files", "timeout": 60},
        ),
        (
            EventKind.REQUEST_ANSWERED,
            NOTES,
            "/home/ana/notes",
            {"verdict": "allow", "by": "dialog", "lifetime": "session"},
        ),
        (EventKind.SESSION_OUTPUT, CODER, "stdout", {"text": "Running tests… 42 passed"}),
    ):
        events.append(Event(kind, session, subject, details, now - 5))
    grants: list[Grant | NetworkGrant] = [
        Grant(
            "g1",
            Path("/home/ana/notes"),
            Mode.READ,
            Lifetime.SESSION,
            NOTES,
            "notes-organizer",
            now - 1400,
        ),
        Grant(
            "g2",
            Path("/home/ana/src/airlock"),
            Mode.READ_WRITE,
            Lifetime.SESSION,
            CODER,
            "coder",
            now - 400,
        ),
        NetworkGrant(
            "g3",
            "api.github.com",
            443,
            Access.CONNECT,
            True,
            Lifetime.ALWAYS,
            None,
            "notes-organizer",
            now - 9000,
        ),
        NetworkGrant(
            "g4",
            "paste.example",
            443,
            Access.UPLOAD,
            False,
            Lifetime.UNTIL,
            None,
            "notes-organizer",
            now - 60,
            now + 3_600,
        ),
    ]
    return sessions, events, grants


def audit(now: float) -> list[AuditRecord]:
    return [
        AuditRecord(
            seq,
            now - 60 + seq,
            session,
            kind,
            subject,
            {},
            hashlib.sha256(b"%d" % (seq - 1)).hexdigest(),
            hashlib.sha256(b"%d" % seq).hexdigest(),
        )
        for seq, (session, kind, subject) in enumerate(
            [
                (NOTES, "session.started", "notes-organizer"),
                (NOTES, "grant.added", "/home/ana/notes"),
                (CODER, "session.started", "coder"),
                (CODER, "grant.added", "/home/ana/src/airlock"),
                (NOTES, "request.asked", "paste.example:443"),
                (NOTES, "request.answered", "paste.example:443"),
                (CODER, "changes.committed", "/home/ana/src/airlock/README.md"),
                (RESEARCHER, "session.started", "researcher"),
            ]
            * 2
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
    finished = ended(now)
    window.names.learn(finished)
    window.history.set_ended(finished, {r.id for r in sessions})
    window.history.view.selectRow(0)
    window.history.detail.show_session(ended_summary(finished[0]), OUTPUT, None)
    return window


def staged_review(state: Path) -> ReviewWindow:
    """The review of an agent that rewrote a summary, added two in a deep folder and
    deleted a draft: folders folded into their paths, a diff worth reading."""
    state = Path(tempfile.mkdtemp(dir=state))  # one for each scheme shown
    host = state / "home" / "ana" / "notes"
    host.mkdir(parents=True)
    (host / "index.md").write_text(
        "# Notes\n\nWeekly summaries live in summaries/.\n\n- week 47: hiring plan\n"
        "- week 48: release 2.3 slipped by a week\n"
    )
    (host / "draft.txt").write_text("to sort out later\n")
    dirs = Dirs(config=state / "config", state=state / "state", runtime=state / "run")
    dirs.ensure()
    review = Review(dirs, EventBus())
    staging = SessionStaging(dirs.sessions / NOTES / "staging", NOTES)
    _, upper, _ = staging.add_tree(host, "g2", 1024**2, None)
    (upper / "index.md").write_text(
        "# Notes\n\nWeekly summaries live in summaries/2026/december/.\n\n"
        "- week 47: hiring plan agreed\n- week 48: release 2.3 slipped by a week\n"
        "- week 49: infrastructure budget approved\n"
    )
    (upper / "summaries" / "2026" / "december").mkdir(parents=True)
    (upper / "summaries" / "2026" / "december" / "week-49-summary-of-meetings.md").write_text(
        "# Week 49\n\n- Infrastructure budget approved.\n- Two hires start in January.\n"
    )
    (upper / "summaries" / "2026" / "december" / "open-questions.md").write_text(
        "- Who owns the release checklist?\n"
    )
    os.mknod(upper / "draft.txt", 0o600 | stat.S_IFCHR, 0)  # a whiteout: the draft is deleted
    window = ReviewWindow(
        NOTES, review, lambda coroutine: coroutine.close(), agent="notes-organizer"
    )
    asyncio.run(window.load())
    window.files.setCurrentItem(window.item_for(host / "index.md"))
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

    def output() -> None:
        window.tabs.setCurrentIndex(0)
        window.history.detail.tabs.setCurrentIndex(1)

    def sight() -> None:
        now = time.time()
        window.tabs.setCurrentIndex(0)
        window.sessions_view.selectRow(0)
        running = window.sessions.rows[0]
        summary = ended_summary(running)
        window.history.detail.show_session(
            SessionSummary(running, summary.activity, summary.grants[:1], 0, 0, 1, 120, 0),
            "Reading 37 notes in /work/notes …\n",
            running_sight(now),
        )
        window.history.detail.tabs.setCurrentIndex(2)

    yield Shown("main-session-output", window, output)
    yield Shown("main-session-sight", window, sight)
    window.hide()

    review = staged_review(state)
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
