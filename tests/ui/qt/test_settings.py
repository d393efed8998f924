"""Options declared once: typed reads with defaults, a dialog built from the declarations,
and the autostart entry that follows its checkbox."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QCheckBox, QComboBox, QSpinBox

from ui.qt import settings as options
from ui.qt.settings import OPTIONS, Settings, SettingsDialog, apply_autostart


def test_defaults_types_and_bad_stored_values(tmp_path: Path) -> None:
    path = tmp_path / "a.ini"
    store = QSettings(str(path), QSettings.Format.IniFormat)
    settings = Settings(store)
    assert [settings.get(o) for o in OPTIONS] == [o.default for o in OPTIONS]
    store.setValue(options.CONSENT_TIMEOUT.key, "99999")  # out of range: an edited file
    store.setValue(options.TIMEOUT_ACTION.key, "allow")  # not a choice: never allow by silence
    store.setValue(options.NOTIFY.key, "false")
    assert settings.get(options.CONSENT_TIMEOUT) == 60
    assert settings.get(options.TIMEOUT_ACTION) == "deny"
    assert settings.get(options.NOTIFY) is False
    changed: list[str] = []
    settings.changed.connect(changed.append)
    settings.set(options.CONSENT_TIMEOUT, 30)
    assert (
        Settings(QSettings(str(path), QSettings.Format.IniFormat)).get(options.CONSENT_TIMEOUT)
        == 30
    )
    assert changed == [options.CONSENT_TIMEOUT.key]


def test_dialog_edits_every_option(
    qapp: object, settings: Settings, tmp_path: Path, artifacts: Path
) -> None:
    dialog = SettingsDialog(settings)
    dialog.show()
    dialog.editors[options.CONSENT_TIMEOUT.key].setValue(45)  # type: ignore[attr-defined]
    combo = dialog.editors[options.TIMEOUT_ACTION.key]
    assert isinstance(combo, QComboBox) and combo.count() == 2
    combo.setCurrentIndex(1)
    assert isinstance(dialog.editors[options.AUTOSTART.key], QCheckBox)
    assert isinstance(dialog.editors[options.UNLOCK_DELAY.key], QSpinBox)
    dialog.grab().save(str(artifacts / "settings-dialog.png"))
    dialog.accept()
    assert settings.get(options.CONSENT_TIMEOUT) == 45
    assert settings.get(options.TIMEOUT_ACTION) == "deny-session"


def test_autostart_entry(tmp_path: Path) -> None:
    target = tmp_path / "autostart" / "airlock.desktop"
    apply_autostart(True, target)
    assert "Exec=airlock tray" in target.read_text()
    apply_autostart(False, target)
    assert not target.exists()
