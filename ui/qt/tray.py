"""The tray icon: Airlock's state at a glance and a menu of what can be done from there.

QSystemTrayIcon speaks StatusNotifierItem where a host is registered on the session bus and
falls back to an XEmbed tray icon elsewhere. The menu is rebuilt when the state changes (not
on `aboutToShow`, which StatusNotifierItem hosts do not always deliver).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.store import SessionRecord
from ui.qt.icons import icon
from ui.qt.models import sandbox_label


class TrayState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    ATTENTION = "attention"  # requests wait for the user


class TrayActions(Protocol):
    """What the tray's menu does; the app's controller implements it."""

    def open_window(self) -> None: ...
    def open_session(self, session: str) -> None: ...
    def stop_session(self, session: str) -> None: ...
    def revoke_session(self, session: str) -> None: ...
    def launch_agent(self) -> object: ...
    def show_pending(self) -> None: ...
    def block_network(self, blocked: bool) -> None: ...
    def revoke_everything(self) -> None: ...
    def show_welcome(self) -> object: ...
    def quit(self) -> None: ...


def state_of(sessions: int, pending: int) -> TrayState:
    if pending:
        return TrayState.ATTENTION
    return TrayState.RUNNING if sessions else TrayState.IDLE


def tooltip(sessions: int, pending: int, unwatched: int = 0) -> str:
    parts = [
        "no agents running"
        if not sessions
        else f"{sessions} agent{'s' if sessions != 1 else ''} running"
    ]
    if unwatched:
        parts.append(f"{unwatched} partly unwatched")
    if pending:
        parts.append(f"{pending} request{'s' if pending != 1 else ''} waiting for you")
    return "Airlock — " + " · ".join(parts)


class Tray(QObject):
    activated = Signal()

    def __init__(self, actions: TrayActions, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._actions = actions
        self._icons = {state: icon(f"tray-{state}") for state in TrayState}
        self.state = TrayState.IDLE
        self.sessions: tuple[SessionRecord, ...] = ()
        self.pending = 0
        self.unwatched: frozenset[str] = frozenset()  # ids: see SessionsModel.unwatched
        self.network_blocked = False
        self.icon = QSystemTrayIcon(self._icons[TrayState.IDLE], self)
        self.menu = QMenu()
        self.menu.setObjectName("trayMenu")
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self._rebuild()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    @staticmethod
    def available() -> bool:
        return QSystemTrayIcon.isSystemTrayAvailable()

    def update(
        self,
        sessions: Sequence[SessionRecord],
        pending: int,
        network_blocked: bool,
        unwatched: frozenset[str] = frozenset(),
    ) -> None:
        sessions = tuple(s for s in sessions if s.live)
        if (sessions, pending, network_blocked, unwatched) == (
            self.sessions,
            self.pending,
            self.network_blocked,
            self.unwatched,
        ):
            return
        self.sessions, self.pending, self.network_blocked = sessions, pending, network_blocked
        self.unwatched = unwatched
        self.state = state_of(len(sessions), pending)
        self.icon.setIcon(self._icons[self.state])
        self._rebuild()

    def _tooltip(self) -> str:
        unwatched = sum(s.id in self.unwatched for s in self.sessions)
        return tooltip(len(self.sessions), self.pending, unwatched)

    def notify(self, title: str, text: str) -> None:
        """A balloon where there is no notification daemon."""
        self.icon.showMessage(title, text, QSystemTrayIcon.MessageIcon.Information, 8000)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            if self.pending:
                self._actions.show_pending()
            else:
                self._actions.open_window()
            self.activated.emit()

    def _rebuild(self) -> None:
        menu, actions = self.menu, self._actions
        menu.clear()
        self.icon.setToolTip(self._tooltip())
        header = menu.addAction(
            QIcon(self._icons[self.state]), upper_first(self._tooltip().removeprefix("Airlock — "))
        )
        header.setEnabled(False)
        menu.addSeparator()
        for record in self.sessions:
            partly = "  ·  partly unwatched" if record.id in self.unwatched else ""
            sub = menu.addMenu(f"{record.profile}  ·  {record.id}{partly}")
            sub.setObjectName(f"session-{record.id}")
            sub.addAction(upper_first(sandbox_label(record))).setEnabled(False)
            sub.addAction("Open", functools.partial(actions.open_session, record.id))
            sub.addAction("Stop", functools.partial(actions.stop_session, record.id))
            sub.addAction(
                "Revoke all of its access", functools.partial(actions.revoke_session, record.id)
            )
        if self.sessions:
            menu.addSeparator()
        menu.addAction("Launch agent…", actions.launch_agent)
        pending = menu.addAction(
            f"Pending requests ({self.pending})…" if self.pending else "Pending requests…",
            actions.show_pending,
        )
        pending.setEnabled(bool(self.pending))
        menu.addSeparator()
        block = QAction("Block all network", menu)
        block.setCheckable(True)
        block.setChecked(self.network_blocked)
        block.toggled.connect(actions.block_network)
        menu.addAction(block)
        menu.addAction("Revoke everything", actions.revoke_everything)
        menu.addSeparator()
        menu.addAction("Welcome and help…", actions.show_welcome)
        menu.addAction("Open Airlock", actions.open_window)
        menu.addAction("Quit", actions.quit)


def upper_first(text: str) -> str:
    """The first letter a capital, the rest as written (str.capitalize lowers "Podman")."""
    return text[:1].upper() + text[1:]
