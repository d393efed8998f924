"""The desktop app's options, declared once (key, type, default, title) and kept in QSettings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ui.qt.screen import fit_on_screen

T = TypeVar("T", int, bool, str)


@dataclass(frozen=True, slots=True)
class Option(Generic[T]):
    key: str
    type: type[T]
    default: T
    title: str
    minimum: int = 0
    maximum: int = 0
    choices: tuple[tuple[str, str], ...] = ()  # (value, title) for str options


CONSENT_TIMEOUT = Option(
    "consent/timeout", int, 60, "Deny an unanswered request after (seconds)", minimum=5, maximum=600
)
TIMEOUT_ACTION = Option(
    "consent/timeout_action",
    str,
    "deny",
    "When a request times out",
    choices=(
        ("deny", "Deny it"),
        ("deny-session", "Deny it, and the same request for the rest of the session"),
    ),
)
UNLOCK_DELAY = Option(
    "consent/unlock_delay_ms",
    int,
    800,
    "Keep a new dialog's buttons disabled for (milliseconds)",
    minimum=300,
    maximum=5000,
)
NOTIFY = Option(
    "desktop/notifications", bool, True, "Notify me of requests while the window is hidden"
)
AUTOSTART = Option("desktop/autostart", bool, False, "Start Airlock when I log in")
BLOCK_NETWORK = Option("network/blocked", bool, False, "Block all network access of agents")
COLOURS = Option(
    "desktop/colours",
    str,
    "desktop",
    "Colours",
    choices=(
        ("desktop", "As the desktop (light or dark)"),
        ("light", "Light"),
        ("dark", "Dark"),
        ("high-contrast", "High contrast"),
    ),
)

OPTIONS: tuple[Option[Any], ...] = (
    CONSENT_TIMEOUT,
    TIMEOUT_ACTION,
    UNLOCK_DELAY,
    NOTIFY,
    AUTOSTART,
    BLOCK_NETWORK,
    COLOURS,
)

# What the app remembers rather than options to set: not in OPTIONS (the settings dialog).
WELCOME_SEEN = Option("desktop/welcome_seen", bool, False, "The first-run window was dismissed")
LAST_LAUNCH = Option("launch/last", str, "", "The Launch dialog's last choice (JSON)")


class Settings(QObject):
    """Typed access to the options. A stored value of the wrong type or out of range (an
    edited file) reads as the default."""

    changed = Signal(str)  # the option's key

    def __init__(self, store: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._store = store

    def get(self, option: Option[T]) -> T:
        raw = self._store.value(option.key, option.default)
        value: Any
        try:
            if option.type is bool:
                value = raw if isinstance(raw, bool) else str(raw).lower() in ("true", "1")
            else:
                value = cast(Any, option.type)(raw)
        except (TypeError, ValueError):
            return option.default
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and option.maximum
            and (not option.minimum <= value <= option.maximum)
        ):
            return option.default
        if option.choices and value not in {v for v, _ in option.choices}:
            return option.default
        return value  # type: ignore[no-any-return]

    def set(self, option: Option[T], value: T) -> None:
        if not isinstance(value, option.type):
            raise TypeError(f"{option.key}: expected {option.type.__name__}")
        if self.get(option) == value:
            return
        self._store.setValue(option.key, value)
        self._store.sync()
        self.changed.emit(option.key)


AUTOSTART_FALLBACK = """[Desktop Entry]
Type=Application
Name=Airlock
Exec=airlock tray
Icon=org.airlock.Airlock
Terminal=false
NoDisplay=true
X-GNOME-Autostart-enabled=true
"""


def autostart_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "autostart" / "airlock.desktop"


def apply_autostart(enabled: bool, target: Path | None = None) -> None:
    """The XDG autostart entry (packaging/airlock-autostart.desktop) in or out of place."""
    target = target or autostart_path()
    if not enabled:
        target.unlink(missing_ok=True)
        return
    shipped = Path(__file__).resolve().parents[2] / "packaging" / "airlock-autostart.desktop"
    text = shipped.read_text() if shipped.is_file() else AUTOSTART_FALLBACK
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


class SettingsDialog(QDialog):
    """Every option, with a widget chosen by its type; applied on OK."""

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        fit_on_screen(self)

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Airlock settings")
        self._settings = settings
        self.editors: dict[str, QWidget] = {}
        form = QFormLayout()
        form.setHorizontalSpacing(14)
        for option in OPTIONS:
            editor = self._editor(option)
            editor.setObjectName(option.key)
            self.editors[option.key] = editor
            if isinstance(editor, QCheckBox):
                editor.setText(option.title)
                form.addRow(editor)
            else:
                form.addRow(option.title + ":", editor)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _editor(self, option: Option[Any]) -> QWidget:
        value = self._settings.get(option)
        if option.type is bool:
            box = QCheckBox()
            box.setChecked(bool(value))
            return box
        if option.type is int:
            spin = QSpinBox()
            spin.setRange(option.minimum, option.maximum)
            spin.setValue(int(value))
            return spin
        combo = QComboBox()
        for choice, title in option.choices:
            combo.addItem(title, choice)
        combo.setCurrentIndex(max(0, combo.findData(value)))
        return combo

    def accept(self) -> None:
        for option in OPTIONS:
            editor = self.editors[option.key]
            if isinstance(editor, QCheckBox):
                self._settings.set(option, editor.isChecked())
            elif isinstance(editor, QSpinBox):
                self._settings.set(option, editor.value())
            elif isinstance(editor, QComboBox):
                self._settings.set(option, str(editor.currentData()))
        super().accept()
