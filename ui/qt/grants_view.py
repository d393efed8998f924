"""Revocation you can see: the confirmation that says what the agent loses before a grant (or
all of a session's, or every grant) is revoked, and the few seconds' Undo after.

Why "revoke now, undo re-grants" and not "revoke after a delay": the user said revoke, so
the agent must not keep the access while an undo is on offer — a delayed revocation would
leave a file readable (or a host reachable) for seconds after the click, and an agent that
noticed could copy it in that time. The grant is revoked at once; Undo gives it back
(`Supervisor.arestore`): read-only files reappear in the running agent's view and network
answers are in force again. What cannot be given back is said in the confirmation and in
the undo's message: a read-write folder's session was stopped and stays stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMessageBox, QPushButton, QWidget

from app.grants import AnyGrant, Mode, NetworkGrant
from ui.qt.agents import AgentNames
from ui.revoke_plan import Confirmation

UNDO_SECONDS = 8


def who_loses(grant: AnyGrant, names: AgentNames) -> str:
    if grant.session:
        return names.name(grant.session)
    return f"every session of {grant.profile}"


def stops_agent(grant: AnyGrant) -> bool:
    """A read-write folder cannot be taken back from a running agent: revoking it stops the
    session (app/sessions/revocation.py)."""
    return (
        not isinstance(grant, NetworkGrant)
        and grant.mode is Mode.READ_WRITE
        and grant.path.is_dir()
    )


def loss_text(grant: AnyGrant, names: AgentNames) -> str:
    """What revoking `grant` takes away, and from whom, said before the click."""
    who = who_loses(grant, names)
    if isinstance(grant, NetworkGrant):
        if not grant.allowed:
            return (
                f"{who} may be asked about {grant.subject} again (this removes a refusal you "
                "remembered)."
            )
        return (
            f"{who} loses access to {grant.subject}: its open connections there are cut "
            "now, and it is asked again next time."
        )
    what = "read and write" if grant.mode is Mode.READ_WRITE else "read"
    kind = "the folder and everything in it" if grant.path.is_dir() else "the file"
    text = f"{who} loses {kind} {grant.path} ({what} access), at once."
    if stops_agent(grant):
        text += (
            "\n\nA read-write folder cannot be taken back from a running agent: its "
            "session is stopped now. What it changed stays staged for your review. Undo "
            "gives the grant back for later sessions but does not restart this one."
        )
    elif grant.mode is Mode.READ_WRITE:
        text += (
            "\n\nWhat it wrote stays staged for your review; Undo gives the grant back, "
            "not the staged copy to the agent."
        )
    return text + f"\n\nFor {UNDO_SECONDS} seconds after, Undo gives it back."


def confirm_revoke(
    parent: QWidget, grant: AnyGrant, names: AgentNames, revoke: Callable[[str], object]
) -> QMessageBox:
    """Asks (window-modal, without a nested event loop) and calls `revoke(grant.id)` on yes.
    Returns the box (tests press its buttons)."""
    box = QMessageBox(parent)
    box.setObjectName("confirmRevoke")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Revoke access?")
    box.setText(f"Revoke {grant.path}?")
    box.setInformativeText(loss_text(grant, names))
    yes = box.addButton(
        "Revoke and &stop the agent" if stops_agent(grant) else "&Revoke",
        QMessageBox.ButtonRole.DestructiveRole,
    )
    yes.setObjectName("revokeYes")
    no = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(no)
    box.setEscapeButton(no)

    def clicked(button: object) -> None:
        if button is yes:
            revoke(grant.id)

    box.buttonClicked.connect(clicked)
    box.open()
    return box


def confirm_many(
    parent: QWidget | None, confirmation: Confirmation, revoke: Callable[[], object]
) -> QMessageBox:
    """The confirmation of "Revoke all of its access" and "Revoke everything"
    (ui/revoke_plan.py says what it says); `revoke()` on yes. Without a `parent` (the tray,
    with the window hidden) it is a window of its own."""
    box = QMessageBox(parent)
    box.setObjectName("confirmRevokeMany")
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(confirmation.title)
    box.setText(confirmation.question)
    box.setInformativeText(confirmation.detail)
    yes = box.addButton(confirmation.button, QMessageBox.ButtonRole.DestructiveRole)
    yes.setObjectName("revokeYes")
    no = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(no)
    box.setEscapeButton(no)

    def clicked(button: object) -> None:
        if button is yes:
            revoke()

    box.buttonClicked.connect(clicked)
    box.open()
    box.raise_()
    box.activateWindow()
    return box


class UndoBar(QWidget):
    """ "Revoked …  [Undo (8)]" for a few seconds after a revocation."""

    undo_requested = Signal(list)  # the grant ids to give back

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("undoBar")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.button = QPushButton()
        self.button.setObjectName("undoRevoke")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.button)
        self._grants: list[str] = []
        self._left = 0
        self._tick = QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self._count)
        self.button.clicked.connect(self._undo)
        self.hide()

    def offer(self, text: str, grants: Sequence[str], seconds: int = UNDO_SECONDS) -> None:
        self._grants = list(grants)
        self._left = seconds
        self.label.setText(text)
        self._say()
        self.button.setEnabled(True)
        self.show()
        self._tick.start()

    @property
    def offered(self) -> list[str]:
        return list(self._grants) if self.isVisible() else []

    def _say(self) -> None:
        self.button.setText(f"&Undo ({self._left})")

    def _count(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._tick.stop()
            self._grants = []
            self.hide()
            return
        self._say()

    def _undo(self) -> None:
        if self._grants:
            self._tick.stop()
            grants, self._grants = self._grants, []
            self.hide()
            self.undo_requested.emit(grants)
