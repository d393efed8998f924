"""The consent dialog (in the spirit of OpenSnitch's prompt) and `QtFrontEnd`, which answers the
core's ConsentBroker with it.

Everything an agent controls (its stated reason, file names, hosts, previews) is shown as
plain text, never as rich text, and is marked as unverified. Deny is the default button and
the one the countdown runs on; all buttons stay disabled for a moment after the dialog
appears, so a click or key press aimed at another window cannot answer it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QIcon, QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.consent import Answer, ConsentRequest, RequestKind, Verdict, denied
from app.grants import Lifetime, Mode
from app.policy import Choice, user_answer
from app.text import block, printable, quoted
from ui.qt import settings as options
from ui.qt.findings_preview import FindingsPreview
from ui.qt.icons import icon
from ui.qt.question_queue import QuestionQueue
from ui.qt.screen import fit_on_screen
from ui.qt.settings import Settings
from ui.qt.theme import Hue, box_sheet, follow, muted, text_colour, tone

log = logging.getLogger(__name__)

MAX_DETAIL = 300  # characters of any one agent-supplied value shown in the dialog
MAX_REASON_SHOWN = 1000
MAX_PATHS_SHOWN = 12


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, as the supervisor knows it (not as the agent claims)."""

    agent: str  # the profile's name
    description: str = ""
    image: str = ""
    session: str = ""
    started_at: float | None = None


Describe = Callable[[ConsentRequest], Requester]


@dataclass(frozen=True, slots=True)
class Duration:
    title: str
    lifetime: Lifetime
    seconds: float | None = None


ONCE = Duration("Only this time", Lifetime.ONCE)
FIVE_MINUTES = Duration("For 5 minutes", Lifetime.UNTIL, 300)
ONE_HOUR = Duration("For 1 hour", Lifetime.UNTIL, 3600)
SESSION = Duration("Until this session ends", Lifetime.SESSION)


def durations(kind: RequestKind, agent: str) -> tuple[Duration, ...]:
    always = Duration(f"Always, for every {agent} session", Lifetime.ALWAYS)
    if kind in (RequestKind.FILE_OPEN, RequestKind.NETWORK):
        return (ONCE, FIVE_MINUTES, ONE_HOUR, SESSION, always)
    if kind in (RequestKind.FILE_SAVE, RequestKind.UPLOAD):
        return (ONCE, SESSION)
    return ()  # a commit is answered once, for what it shows


HEADLINES = {
    RequestKind.FILE_OPEN: "{agent} asks to open files",
    RequestKind.FILE_SAVE: "{agent} asks to save a file",
    RequestKind.NETWORK: "{agent} asks to connect to {subject}",
    RequestKind.UPLOAD: "{agent} asks to upload data to {subject}",
    RequestKind.COMMIT: "{agent} asks to write its changes to your files",
}


def said(text: str, limit: int = MAX_REASON_SHOWN) -> str:
    """The agent's own words (its reason, the host it names) for a label: escaped, and
    runs of spaces made one, so that padding cannot push a phrase onto a line of its own
    where it would read as the dialog's; the box it is shown in marks it as the agent's."""
    text = quoted(text[: limit * 4], indent="", width=1_000_000)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object, limit: int = MAX_DETAIL) -> str:
    """An agent-supplied value made safe and short for a plain-text label."""
    text = printable(value if isinstance(value, str) else repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def finding_text(finding: object) -> str:
    """A finding of the upload inspector ({kind, label, offset}) as one line."""
    if isinstance(finding, Mapping):
        where = finding.get("offset")
        text = f"{finding.get('label', '?')} ({finding.get('kind', '?')}"
        text += f", near byte {where})" if isinstance(where, int) else ")"
        return shown(text, 160)
    return shown(finding, 160)


def size_text(size: object) -> str:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "unknown"
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


_PATTERN = re.compile(r"^[\w*?.\-\[\] ]{1,40}$")


def name_filters(raw: object) -> list[str]:
    """The portal's `filters` ({name, patterns: [["glob"|"mime", pattern]…]}, or the D-Bus
    shape (name, [(0|1, pattern)…])) as QFileDialog name filters. Untrusted: only globs that
    look like plain globs are kept; MIME types are left to "All files"."""
    result: list[str] = []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return result
    for entry in list(raw)[:20]:
        if isinstance(entry, Mapping):
            name, patterns = entry.get("name", ""), entry.get("patterns", ())
        elif isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
            name, patterns = entry
        else:
            continue
        globs = []
        for pattern in list(patterns)[:20] if isinstance(patterns, Sequence) else []:
            text = pattern
            if isinstance(pattern, Sequence) and not isinstance(pattern, str):
                is_glob = len(pattern) == 2 and pattern[0] in (0, "glob")
                text = pattern[1] if is_glob else None
            if isinstance(text, str) and _PATTERN.match(text):
                globs.append(text)
        label = shown(name, 40).replace("(", "[").replace(")", "]")
        if globs:
            result.append(f"{label} ({' '.join(globs)})")
    return result


def _plain(text: str, *, selectable: bool = True, wrap: bool = True) -> QLabel:
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    label.setWordWrap(wrap)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class ConsentDialog(QDialog):
    """One request put to the user. Emits `answered` exactly once."""

    answered = Signal(object)  # Answer
    unlocked = Signal()  # its buttons took clicks again

    def __init__(
        self,
        request: ConsentRequest,
        requester: Requester,
        *,
        timeout: float,
        unlock_ms: int,
        clock: Callable[[], float] = time.time,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.request = request
        self.requester = requester
        self._clock = clock
        self._deadline = min(request.deadline, clock() + timeout)
        self._done = False
        self._locked = True
        self._paused_at: float | None = None
        self.paths: tuple[Path, ...] = ()
        self.preview: FindingsPreview | None = None  # an upload's
        self.file_dialog: QFileDialog | None = None
        self._durations = durations(request.kind, requester.agent)

        self.setObjectName("consentDialog")
        self.setWindowTitle(f"Airlock — {requester.agent}")
        self.setWindowIcon(icon("airlock"))
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint, True)
        self.setModal(False)
        self.setMinimumWidth(540)

        # Who asks and the buttons always show in full; what it asks for, its words and the
        # chosen files scroll between them when the screen is small (down to 1024x600), so
        # no content, however long, can squash the identity or push the buttons off screen.
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.setSpacing(8)
        layout.addLayout(self._header())
        who = self._who()
        who.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        layout.addWidget(who)
        content = QWidget()
        content.setObjectName("content")
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 4, 0)
        column.addWidget(self._what())
        column.addWidget(self._reason())
        self.summary = _plain("")
        self.summary.setObjectName("summary")
        follow(self.summary, lambda p: box_sheet("summary", p, Hue.INFO))
        self.summary.hide()
        column.addWidget(self.summary)
        column.addStretch(1)
        self.details = QScrollArea()
        self.details.setObjectName("details")
        self.details.setWidget(content)
        self.details.setWidgetResizable(True)
        self.details.setFrameShape(QFrame.Shape.NoFrame)
        self.details.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # A Tab stop, so that the keyboard can scroll what does not fit; the margin leaves
        # room for its focus ring (ui/qt/theme.py).
        self.details.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.details.setViewportMargins(2, 2, 2, 2)
        layout.addWidget(self.details, 1)
        choices = self._choices()
        if choices is not None:
            layout.addLayout(choices)
        layout.addLayout(self._buttons())

        self._tick = QTimer(self)
        self._tick.setInterval(250)
        self._tick.timeout.connect(self._update_countdown)
        self._tick.start()
        self._unlock = QTimer(self)
        self._unlock.setSingleShot(True)
        self._unlock.setInterval(unlock_ms)
        self._unlock.timeout.connect(self._unlock_buttons)
        self._update_countdown()

    # layout

    def _header(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(14)
        picture = QLabel()
        picture.setPixmap(icon("airlock").pixmap(48, 48))
        picture.setAlignment(Qt.AlignmentFlag.AlignTop)
        row.addWidget(picture)
        column = QVBoxLayout()
        column.setSpacing(2)
        headline = _plain(
            HEADLINES[self.request.kind].format(
                agent=self.requester.agent, subject=said(self.request.subject, 80)
            )
        )
        headline.setObjectName("headline")
        font = headline.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        headline.setFont(font)
        column.addWidget(headline)
        if self.requester.description:
            column.addWidget(_plain(self.requester.description))
        row.addLayout(column, 1)
        return row

    def _who(self) -> QWidget:
        box = QGroupBox("Who asks")
        form = QFormLayout(box)
        form.setHorizontalSpacing(16)
        form.addRow("Agent:", _plain(self.requester.agent))
        form.addRow("Profile:", _plain(self.request.profile or self.requester.agent))
        if self.requester.image:
            form.addRow("Image:", _plain(self.requester.image))
        started = ""
        if self.requester.started_at:
            started = time.strftime(
                "  ·  started %H:%M:%S", time.localtime(self.requester.started_at)
            )
        form.addRow("Session:", _plain(f"{self.request.session}{started}"))
        return box

    def _what(self) -> QWidget:
        request, details = self.request, self.request.details
        box = QGroupBox("What it asks for")
        form = QFormLayout(box)
        form.setHorizontalSpacing(16)
        if request.kind is RequestKind.FILE_OPEN:
            what = (
                "a folder"
                if details.get("directory")
                else ("one or more files" if details.get("multiple") else "a file")
            )
            form.addRow("To open:", _plain(f"{what} you choose in the next step"))
            title = details.get("title") or request.subject
            if title:
                form.addRow("Dialog title:", _plain(shown(title)))
            filters = name_filters(details.get("filters"))
            if filters:
                form.addRow("File types:", _plain(", ".join(filters)))
        elif request.kind is RequestKind.FILE_SAVE:
            form.addRow("To save:", _plain("one file, where you choose in the next step"))
            if details.get("current_name"):
                form.addRow("Suggested name:", _plain(shown(details["current_name"])))
            if details.get("title"):
                form.addRow("Dialog title:", _plain(shown(details["title"])))
        elif request.kind is RequestKind.NETWORK:
            form.addRow("Host:", _plain(shown(request.subject)))
            for key, title in (
                ("port", "Port:"),
                ("method", "Method:"),
                ("url", "Address:"),
                ("scheme", "Protocol:"),
            ):
                if key in details:
                    form.addRow(title, _plain(shown(details[key])))
        elif request.kind is RequestKind.UPLOAD:
            self._upload_rows(form, details)
        elif request.kind is RequestKind.COMMIT:
            paths = details.get("paths") or []
            count = details.get("count", len(paths) if isinstance(paths, list) else 0)
            form.addRow("Changes:", _plain(f"{shown(count)} file(s) staged by the agent"))
            if isinstance(paths, list) and paths:
                listed = "\n".join(shown(p) for p in paths[:MAX_PATHS_SHOWN])
                if len(paths) > MAX_PATHS_SHOWN:
                    listed += f"\n… and {len(paths) - MAX_PATHS_SHOWN} more"
                form.addRow("Files:", _plain(listed))
        known = {
            "directory",
            "multiple",
            "title",
            "filters",
            "current_name",
            "port",
            "method",
            "url",
            "scheme",
            "paths",
            "count",
            "size",
            "sha256",
            "preview",
            "findings",
            "host",
            "mode",
            "current_folder",
            "content_type",
            "mime",
            "path",
            "complete",
            "inspected",
            "rule",
            "modal",
            "accept_label",
            "image",
            "current_filter",
            "choices",
            "current_file",
            "files",
            "inspection",
        }
        for key, value in details.items():
            if key not in known and isinstance(value, str | int | float):
                form.addRow(_plain(f"{shown(key, 30)}:"), _plain(shown(value)))
        return box

    def _upload_rows(self, form: QFormLayout, details: Mapping[str, Any]) -> None:
        form.addRow("Destination:", _plain(shown(details.get("host") or self.request.subject)))
        form.addRow("Size:", _plain(size_text(details.get("size"))))
        if details.get("method") or details.get("path"):
            form.addRow(
                "Request:",
                _plain(
                    shown(f"{details.get('method', '')} {details.get('path', '')}".strip(), 120)
                ),
            )
        if details.get("inspection") == "inspected":
            form.addRow(
                "Seen:", _plain("HTTPS, decrypted by Airlock: the preview is what would leave")
            )
        mime = details.get("mime") or details.get("content_type")
        if mime:
            form.addRow("Type:", _plain(shown(mime, 80)))
        digest = details.get("sha256")
        if isinstance(digest, str) and digest:
            form.addRow("SHA-256:", _plain(shown(f"{digest[:32]}\n{digest[32:64]}", 70)))
        if details.get("complete") is False:
            form.addRow("", _plain("Only the start of the upload has been seen so far."))
        findings = details.get("findings") or []
        if isinstance(findings, list) and findings:
            label = _plain("\n".join("⚠ " + finding_text(f) for f in findings[:10]))
            label.setObjectName("findings")
            text_colour(label, lambda p: tone(p, Hue.DANGER), " font-weight: bold;")
            form.addRow("Findings:", label)
        preview = details.get("preview")
        excerpts = details.get("excerpts")
        if (isinstance(preview, str) and preview) or excerpts:
            # The region around each finding, marked and scrolled to (not only the start).
            titles = [finding_text(f) for f in findings] if isinstance(findings, list) else []
            self.preview = FindingsPreview(preview, excerpts, titles)
            self.preview.view.setTabChangesFocus(True)  # read-only: Tab moves on, arrows scroll
            form.addRow("Preview:", self.preview)

    def _reason(self) -> QWidget:
        box = QGroupBox("The agent says (not verified)")
        box.setObjectName("reasonBox")
        column = QVBoxLayout(box)
        text = said(self.request.reason) if self.request.reason else "(no reason given)"
        label = _plain(text)
        label.setObjectName("reason")
        font = label.font()
        font.setItalic(True)
        label.setFont(font)
        follow(label, lambda p: box_sheet("reason", p, Hue.WARNING))
        column.addWidget(label)
        return box

    def _choices(self) -> QHBoxLayout | None:
        row = QHBoxLayout()
        row.setSpacing(8)
        self.mode_box: QComboBox | None = None
        self.duration_box: QComboBox | None = None
        if self.request.kind is RequestKind.FILE_OPEN:
            self.mode_box = QComboBox()
            self.mode_box.setObjectName("mode")
            self.mode_box.addItem("Read only", Mode.READ)
            self.mode_box.addItem("Read and write (changes wait for your review)", Mode.READ_WRITE)
            asked = self.request.details.get("mode")
            self.mode_box.setCurrentIndex(1 if asked == str(Mode.READ_WRITE) else 0)
            self.mode_box.currentIndexChanged.connect(self._refresh_summary)
            access = QLabel("&Access:")
            access.setBuddy(self.mode_box)
            row.addWidget(access)
            row.addWidget(self.mode_box, 1)
        if self._durations:
            self.duration_box = QComboBox()
            self.duration_box.setObjectName("duration")
            for duration in self._durations:
                self.duration_box.addItem(duration.title)
            label = QLabel("Allow &for:")
            label.setBuddy(self.duration_box)
            row.addWidget(label)
            row.addWidget(self.duration_box, 1)
        return row if row.count() else None

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.countdown = _plain("", selectable=False)
        self.countdown.setObjectName("countdown")
        text_colour(self.countdown, muted)
        row.addWidget(self.countdown, 1)
        self.deny_button = QPushButton("&Deny")
        self.deny_button.setObjectName("deny")
        self.deny_button.setIcon(QIcon.fromTheme("process-stop"))
        self.deny_button.setDefault(True)
        self.deny_button.setAutoDefault(True)
        self.deny_button.clicked.connect(self.deny)
        self.allow_button = QPushButton(self._allow_title())
        self.allow_button.setObjectName("allow")
        self.allow_button.setAutoDefault(False)
        self.allow_button.clicked.connect(self.allow)
        for button in (self.deny_button, self.allow_button):
            button.setMinimumWidth(130)
            button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
            button.setEnabled(False)
        row.addWidget(self.deny_button)
        row.addWidget(self.allow_button)
        return row

    def _allow_title(self) -> str:
        if self.request.kind is RequestKind.FILE_OPEN:
            return "&Grant access" if self.paths else "&Choose files…"
        if self.request.kind is RequestKind.FILE_SAVE:
            return "&Grant access" if self.paths else "&Choose where…"
        return "&Allow"

    # behaviour

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.isWindow():  # on its own, not a page of the questions' window
            fit_on_screen(self)
        self.lock()

    def lock(self) -> None:
        """Disables the buttons for a moment, from now: each time the question comes into
        view (it appears, or comes to the front of the queue when the one before it is
        answered), a click or key press aimed at what was there before cannot answer it."""
        if self._done:
            return
        self._locked = True
        self.deny_button.setEnabled(False)
        self.allow_button.setEnabled(False)
        self.deny_button.setFocus()
        self._unlock.start()

    @property
    def locked(self) -> bool:
        return self._locked

    def _unlock_buttons(self) -> None:
        self._locked = False
        self.deny_button.setEnabled(True)
        self.allow_button.setEnabled(True)
        self.deny_button.setFocus()
        self.unlocked.emit()

    def remaining(self) -> float:
        now = self._paused_at if self._paused_at is not None else self._clock()
        return max(0.0, self._deadline - now)

    def _update_countdown(self) -> None:
        if self._done:
            return
        left = self.remaining()
        if left <= 0:
            self._finish(denied("timeout"))
            return
        seconds = math.ceil(left)
        self.deny_button.setText(f"&Deny ({seconds})")
        self.countdown.setText(
            "Waiting for your choice…"
            if self._paused_at is not None
            else f"Denied automatically in {seconds} s"
        )

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self._locked:
            event.accept()  # a key meant for another window must not answer this one
            return
        super().keyPressEvent(event)

    def reject(self) -> None:  # Escape
        if not self._locked:
            self.deny()

    def closeEvent(self, event: QCloseEvent) -> None:
        self._finish(denied("dialog closed"))
        super().closeEvent(event)

    def deny(self) -> None:
        self._finish(Answer(Verdict.DENY, by="dialog"))

    def allow(self) -> None:
        if self._locked or self._done:
            return
        if self.request.kind in (RequestKind.FILE_OPEN, RequestKind.FILE_SAVE) and not self.paths:
            self.choose_files()
            return
        duration = (
            self._durations[self.duration_box.currentIndex()]
            if self.duration_box is not None
            else ONCE
        )
        until = self._clock() + duration.seconds if duration.seconds else None
        writable = (
            self.mode_box is not None and Mode(self.mode_box.currentData()) is Mode.READ_WRITE
        )
        self._finish(
            user_answer(
                self.request.kind, Choice(duration.lifetime, until, self.paths, writable), "dialog"
            )
        )

    def choose_files(self) -> None:
        """Opens Qt's own (non-native) file dialog: it works on every platform plugin and
        can be driven by tests; while it is open the countdown waits."""
        if self.file_dialog is not None:
            self.file_dialog.raise_()
            return
        details = self.request.details
        title = shown(details.get("title") or "Choose files", 80)
        dialog = QFileDialog(self, f"{self.requester.agent}: {title}", str(Path.home()))
        dialog.setObjectName("fileDialog")
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)
        if self.request.kind is RequestKind.FILE_SAVE:
            dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
            dialog.setFileMode(QFileDialog.FileMode.AnyFile)
            name = details.get("current_name")
            if isinstance(name, str) and name and "/" not in name:
                dialog.selectFile(printable(name)[:255])
        elif details.get("directory"):
            dialog.setFileMode(QFileDialog.FileMode.Directory)
            dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        else:
            dialog.setFileMode(
                QFileDialog.FileMode.ExistingFiles
                if details.get("multiple")
                else QFileDialog.FileMode.ExistingFile
            )
        filters = name_filters(details.get("filters"))
        if filters:
            dialog.setNameFilters([*filters, "All files (*)"])
        dialog.filesSelected.connect(self._files_chosen)
        dialog.finished.connect(self._file_dialog_closed)
        self.file_dialog = dialog
        self._paused_at = self._clock()
        dialog.open()

    def _file_dialog_closed(self, _result: int) -> None:
        if self._paused_at is not None:
            self._deadline += self._clock() - self._paused_at
            self._paused_at = None
        if self.file_dialog is not None:
            self.file_dialog.deleteLater()
            self.file_dialog = None
        self.activateWindow()
        self._update_countdown()

    def _files_chosen(self, files: list[str]) -> None:
        self.paths = tuple(Path(f) for f in files if f)
        self._refresh_summary()
        self.allow_button.setText(self._allow_title())
        self.allow_button.setDefault(bool(self.paths))
        self.deny_button.setDefault(not self.paths)
        self.allow_button.setFocus()

    def _refresh_summary(self) -> None:
        if not self.paths:
            self.summary.hide()
            return
        writes = self.request.kind is RequestKind.FILE_SAVE
        mode = Mode(self.mode_box.currentData()) if self.mode_box is not None else Mode.READ
        if writes:
            verb = "save to (you review the file before it reaches this place)"
        elif mode is Mode.READ_WRITE:
            verb = "read and change (changes wait for your review)"
        else:
            verb = "read"
        lines = [f"{self.requester.agent} will be able to {verb}:"]
        lines += [f"  •  {p}" for p in self.paths[:MAX_PATHS_SHOWN]]
        if len(self.paths) > MAX_PATHS_SHOWN:
            lines.append(f"  … and {len(self.paths) - MAX_PATHS_SHOWN} more")
        self.summary.setText("\n".join(lines))
        self.summary.show()

    def _finish(self, answer: Answer) -> None:
        if self._done:
            return
        self._done = True
        self._tick.stop()
        self._unlock.stop()
        if self.file_dialog is not None:
            self.file_dialog.reject()
        self.answered.emit(answer)
        self.hide()


def printable_block(text: str) -> str:
    """A preview pane's text: app/text.py's `block` (line breaks and tabs kept)."""
    return block(text[:8000])


class QtFrontEnd(QObject):
    """Answers the ConsentBroker's requests with dialogs (app.consent.FrontEnd)."""

    pending_changed = Signal(int)
    asked = Signal(object)  # ConsentRequest, when its dialog appears

    def __init__(
        self, settings: Settings, describe: Describe, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._settings = settings
        self._describe = describe
        self._dialogs: dict[str, ConsentDialog] = {}
        self._silenced: set[tuple[str, str, str]] = set()
        self.queue = QuestionQueue()  # every pending question, in one window

    async def answer(self, request: ConsentRequest) -> Answer:
        key = (request.session, str(request.kind), request.subject)
        if key in self._silenced:
            return denied("denied earlier in this session")
        # Who asks comes from the store (and the profile's file): read off the loop.
        requester = await asyncio.to_thread(self._describe, request)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        dialog = ConsentDialog(
            request,
            requester,
            timeout=float(self._settings.get(options.CONSENT_TIMEOUT)),
            unlock_ms=self._settings.get(options.UNLOCK_DELAY),
        )

        def done(answer: Answer) -> None:
            if not future.done():
                future.set_result(answer)

        dialog.answered.connect(done)
        self._dialogs[request.id] = dialog
        self.pending_changed.emit(len(self._dialogs))
        self.queue.add(dialog)
        self.asked.emit(request)
        try:
            answer = await future
        finally:
            self._dialogs.pop(request.id, None)
            # Gone already when the app (and the questions' window) closed first.
            if shiboken6.isValid(dialog):
                dialog._finish(denied("withdrawn"))  # closes it when the broker gave up
                dialog.deleteLater()
            self.pending_changed.emit(len(self._dialogs))
        if answer.by == "timeout" and self._settings.get(options.TIMEOUT_ACTION) == "deny-session":
            self._silenced.add(key)
        return answer

    def forget(self, session: str) -> None:
        """The session ended: what it was denied for its duration is no longer kept (a
        long-running app would otherwise hold it for every session it ever ran)."""
        self._silenced = {key for key in self._silenced if key[0] != session}

    @property
    def pending(self) -> int:
        return len(self._dialogs)

    def dialog(self, request_id: str) -> ConsentDialog | None:
        return self._dialogs.get(request_id)

    def dialogs(self) -> list[ConsentDialog]:
        return list(self._dialogs.values())

    def raise_all(self) -> None:
        """Brings the questions' window to the front."""
        self.queue.present()

    def deny(self, request_id: str) -> None:
        dialog = self._dialogs.get(request_id)
        if dialog is not None:
            dialog._finish(Answer(Verdict.DENY, by="notification"))

    def forget_session(self, session: str) -> None:
        self._silenced = {k for k in self._silenced if k[0] != session}
