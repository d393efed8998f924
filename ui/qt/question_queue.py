"""The pending questions in one window: the one in front in full (a `ConsentDialog` page),
"1 of N", and every agent that asks listed with its questions and their deadlines, with
"deny all from this agent" and "stop this agent"."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.consent import Answer, RequestKind, Verdict
from app.text import printable
from ui.qt.icons import icon
from ui.qt.screen import fit_on_screen

if TYPE_CHECKING:  # ui.qt.consent puts its dialogs in this queue
    from ui.qt.consent import ConsentDialog

WHAT = {
    RequestKind.FILE_OPEN: "open files",
    RequestKind.FILE_SAVE: "save a file",
    RequestKind.NETWORK: "connect to {subject}",
    RequestKind.UPLOAD: "upload to {subject}",
    RequestKind.COMMIT: "write its changes",
}


def clock_text(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass(slots=True)
class _Asker:
    """One session that asks, and its pending questions, soonest deadline first."""

    session: str
    agent: str
    questions: list[ConsentDialog] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.agent} · {self.session}"


class QuestionQueue(QWidget):
    """One window for every pending question. A new question never takes the place of the
    one in front (a click meant for that one would answer it): it joins its agent's list.
    Agents are listed one line each, so a flood from one cannot push another out of sight."""

    stop_requested = Signal(str)  # session

    def __init__(
        self, clock: Callable[[], float] = time.time, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._clock = clock
        self._askers: dict[str, _Asker] = {}  # by session, in the order they first asked
        self.current: ConsentDialog | None = None
        self._holding = False  # answering many at once: the front is chosen after
        self.setObjectName("questionQueue")
        self.setWindowTitle("Airlock")
        self.setWindowIcon(icon("airlock"))
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint, True)

        top = QHBoxLayout()
        self.position = QLabel()
        self.position.setObjectName("position")
        font = self.position.font()
        font.setBold(True)
        self.position.setFont(font)
        top.addWidget(self.position, 1)
        self.previous_button = QPushButton("‹ &Previous")
        self.previous_button.setObjectName("previous")
        self.previous_button.clicked.connect(self._previous)
        self.next_button = QPushButton("&Next ›")
        self.next_button.setObjectName("next")
        self.next_button.clicked.connect(self._next)
        for button in (self.previous_button, self.next_button):
            button.setAutoDefault(False)
            top.addWidget(button)

        side = QVBoxLayout()
        side.setSpacing(4)
        agents_title = QLabel("Agents as&king:")
        side.addWidget(agents_title)
        self.agents = QListWidget()
        self.agents.setObjectName("agents")
        agents_title.setBuddy(self.agents)
        self.agents.setMaximumHeight(110)
        self.agents.itemActivated.connect(self._agent_chosen)
        self.agents.itemClicked.connect(self._agent_chosen)
        side.addWidget(self.agents)
        questions_title = QLabel("&Questions from this agent:")
        side.addWidget(questions_title)
        self.questions = QListWidget()
        self.questions.setObjectName("questions")
        questions_title.setBuddy(self.questions)
        self.questions.itemActivated.connect(self._question_chosen)
        self.questions.itemClicked.connect(self._question_chosen)
        side.addWidget(self.questions, 1)
        self.deny_agent_button = QPushButton("Deny a&ll from this agent")
        self.deny_agent_button.setObjectName("denyAgent")
        self.deny_agent_button.clicked.connect(self.deny_agent)
        self.stop_agent_button = QPushButton("&Stop this agent")
        self.stop_agent_button.setObjectName("stopAgent")
        self.stop_agent_button.clicked.connect(self.stop_agent)
        for button in (self.deny_agent_button, self.stop_agent_button):
            button.setAutoDefault(False)
            side.addWidget(button)
        self.side = QWidget()
        self.side.setObjectName("side")
        self.side.setLayout(side)
        self.side.setFixedWidth(250)

        self.pages = QStackedWidget()
        self.pages.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.side)
        row.addWidget(self.pages, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(top)
        layout.addLayout(row, 1)

        self._tick = QTimer(self)
        self._tick.setInterval(500)
        self._tick.timeout.connect(self._refresh_times)

    # what the front end does

    def add(self, dialog: ConsentDialog) -> None:
        """Puts a question in the queue; shows the window if it was not showing."""
        request = dialog.request
        asker = self._askers.get(request.session)
        if asker is None:
            asker = self._askers[request.session] = _Asker(request.session, dialog.requester.agent)
        # By deadline: the order they were asked in, unless one must be answered sooner.
        # (Their describing, off the loop, can finish in any order.)
        place = sum(1 for d in asker.questions if d.request.deadline <= request.deadline)
        asker.questions.insert(place, dialog)
        dialog.setWindowFlags(Qt.WindowType.Widget)
        self.pages.addWidget(dialog)
        # Bound methods, not closures: a closure over the dialog or the window would tie
        # them in a cycle that only the garbage collector frees, in whatever thread it
        # runs, and a widget freed off the GUI thread crashes the process.
        dialog.answered.connect(self._sender_answered)
        dialog.unlocked.connect(self._refresh_buttons)
        appeared = not self.isVisible()
        if self.current is None:
            self._bring(dialog)
        self._refresh()
        if appeared:
            fit_on_screen(self, 880, 600)
            self.show()
            self.raise_()
            self.activateWindow()
            self._tick.start()

    def present(self) -> None:
        if self.current is None:
            return
        self.show()
        self.raise_()
        self.activateWindow()

    @property
    def pending(self) -> list[ConsentDialog]:
        """Every pending question, agent by agent (in the order they first asked), each
        agent's soonest deadline first."""
        return [d for asker in self._askers.values() for d in asker.questions]

    def deny_agent(self) -> None:
        """Denies every pending question of the agent in front."""
        if self.current is not None and not self.current.locked:
            self._deny_session(self.current.request.session, "dialog: all from this agent")

    def stop_agent(self) -> None:
        """Stops the agent in front, and denies what it still asks."""
        if self.current is None or self.current.locked:
            return
        session = self.current.request.session
        self._deny_session(session, "dialog: agent stopped")
        self.stop_requested.emit(session)

    # behaviour

    def _deny_session(self, session: str, by: str) -> None:
        asker = self._askers.get(session)
        # One update at the end: each answer bringing the next one to the front in turn
        # would show, lock and list a flood's questions one by one.
        self._holding = True
        try:
            # The one in front last: taking it out of the stack shows another page.
            for dialog in sorted(asker.questions if asker else [], key=lambda d: d is self.current):
                dialog._finish(Answer(Verdict.DENY, by=by))
        finally:
            self._holding = False
        if self.current is None and self.pending:
            self._bring(self.pending[0])
        elif self.current is None:
            self._tick.stop()
            self.hide()

    def _answered(self, dialog: ConsentDialog) -> None:
        asker = self._askers.get(dialog.request.session)
        if asker is None or dialog not in asker.questions:
            return
        order = self.pending
        index = order.index(dialog)
        asker.questions.remove(dialog)
        if not asker.questions:
            del self._askers[asker.session]
        self.pages.removeWidget(dialog)
        if self._holding and dialog is not self.current:
            return
        if dialog is self.current:
            self.current = None
            if self._holding:
                return
            rest = self.pending
            # The next of the same agent, else the next agent's first: the order read on.
            following = [d for d in order[index + 1 :] if d in rest]
            if following or rest:
                self._bring((following or rest)[0])
        if self.current is None:
            self._tick.stop()
            self.hide()
            return
        self._refresh()

    def _bring(self, dialog: ConsentDialog) -> None:
        if dialog is self.current:
            return
        self.current = dialog
        self.pages.setCurrentWidget(dialog)  # its showEvent locks its buttons for a moment
        self._refresh_buttons()
        self.setWindowTitle(f"Airlock — {dialog.requester.agent}")
        self._refresh()

    def _sender_answered(self, _answer: object) -> None:
        dialog = self.sender()
        for asked in self.pending:
            if asked is dialog:
                self._answered(asked)
                return

    def _previous(self) -> None:
        self._step(-1)

    def _next(self) -> None:
        self._step(1)

    def _step(self, by: int) -> None:
        order = self.pending
        if self.current is None or len(order) < 2:
            return
        self._bring(order[(order.index(self.current) + by) % len(order)])

    def _agent_chosen(self, item: QListWidgetItem) -> None:
        asker = self._askers.get(item.data(Qt.ItemDataRole.UserRole))
        if asker is not None and asker.questions:
            self._bring(asker.questions[0])

    def _question_chosen(self, item: QListWidgetItem) -> None:
        self.bring_request(item.data(Qt.ItemDataRole.UserRole))

    def bring_request(self, request_id: str) -> None:
        """Puts that question in front (a row of the list chosen, a notification clicked)."""
        for dialog in self.pending:
            if dialog.request.id == request_id:
                self._bring(dialog)

    def _refresh(self) -> None:
        """The count, the lists and the buttons, for the question in front."""
        order = self.pending
        current = self.current
        if current is None:
            return
        asker = self._askers[current.request.session]
        mine = asker.questions.index(current) + 1
        self.position.setText(
            f"Question {order.index(current) + 1} of {len(order)}"
            + (
                f"  ·  {mine} of {len(asker.questions)} from {asker.agent}"
                if len(asker.questions) != len(order)
                else ""
            )
        )
        several = len(order) > 1
        self.previous_button.setEnabled(several)
        self.next_button.setEnabled(several)
        self.side.setVisible(several)
        self.agents.clear()
        for other in self._askers.values():
            item = QListWidgetItem(self._asker_text(other))
            item.setData(Qt.ItemDataRole.UserRole, other.session)
            self.agents.addItem(item)
            if other is asker:
                self.agents.setCurrentItem(item)
        self.questions.clear()
        for dialog in asker.questions:
            item = QListWidgetItem(self._question_text(dialog))
            item.setData(Qt.ItemDataRole.UserRole, dialog.request.id)
            self.questions.addItem(item)
            if dialog is current:
                self.questions.setCurrentItem(item)
        self._refresh_buttons()

    def _refresh_times(self) -> None:
        for row, asker in enumerate(self._askers.values()):
            item = self.agents.item(row)
            if item is not None:
                item.setText(self._asker_text(asker))
        if self.current is not None:
            mine = self._askers[self.current.request.session].questions
            for row, dialog in enumerate(mine):
                item = self.questions.item(row)
                if item is not None:
                    item.setText(self._question_text(dialog))
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        # Locked with the question in front: a stray click cannot stop an agent either.
        free = self.current is not None and not self.current.locked
        self.deny_agent_button.setEnabled(free)
        self.stop_agent_button.setEnabled(free)

    def _asker_text(self, asker: _Asker) -> str:
        soonest = min(d.remaining() for d in asker.questions)
        count = len(asker.questions)
        return (
            f"{asker.title}\n{count} question{'s' if count > 1 else ''}, "
            f"next denied in {clock_text(soonest)}"
        )

    @staticmethod
    def _question_text(dialog: ConsentDialog) -> str:
        request = dialog.request
        subject = printable(request.subject[:200])
        subject = subject if len(subject) <= 40 else subject[:39] + "…"
        what = WHAT[request.kind].format(subject=subject)
        return f"{clock_text(dialog.remaining())}  {what}"

    def closeEvent(self, event: QCloseEvent) -> None:
        # Closing the window is no answer: everything in it is denied, as a closed dialog is.
        for dialog in self.pending:
            dialog._finish(Answer(Verdict.DENY, by="dialog closed"))
        super().closeEvent(event)

    def keyPressEvent(self, event: Any) -> None:
        if self.current is not None and event.key() == Qt.Key.Key_Escape:
            self.current.reject()  # denies, once its buttons are unlocked
            return
        super().keyPressEvent(event)
