"""The desktop integration files in packaging/: the validators Linux desktops use accept them,
and they agree with each other and with the app (ids, icon, command)."""

from __future__ import annotations

import configparser
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.ui.qt.conftest import REPO, need
from ui.qt.app import APP_ID, DESKTOP_FILE

PACKAGING = REPO / "packaging"
ICON = PACKAGING / "icons/hicolor/scalable/apps/org.airlock.Airlock.svg"


def desktop_entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser["Desktop Entry"]


def test_desktop_files_validate() -> None:
    validator = need("desktop-file-validate", "desktop-file-utils")
    for name in ("airlock.desktop", "airlock-autostart.desktop"):
        result = subprocess.run([validator, str(PACKAGING / name)], capture_output=True, text=True)
        assert result.returncode == 0 and "error" not in result.stdout, result.stdout
    launcher = desktop_entry(PACKAGING / "airlock.desktop")
    autostart = desktop_entry(PACKAGING / "airlock-autostart.desktop")
    assert launcher["Exec"] == "airlock tray --show" and autostart["Exec"] == "airlock tray"
    assert launcher["Icon"] == autostart["Icon"] == APP_ID == ICON.stem
    assert launcher["StartupWMClass"] == DESKTOP_FILE == "airlock"


def test_appstream_metainfo_validates() -> None:
    validator = need("appstreamcli", "appstream")
    metainfo = PACKAGING / f"{APP_ID}.metainfo.xml"
    result = subprocess.run(
        [validator, "validate", "--no-net", str(metainfo)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    root = ET.parse(metainfo).getroot()
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == f"{DESKTOP_FILE}.desktop"


def test_icon_is_a_scalable_svg_and_the_app_ships_its_own_copy() -> None:
    root = ET.parse(ICON).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
    assert ICON.read_bytes() == (REPO / "ui/qt/icons/airlock.svg").read_bytes()


def test_systemd_user_unit() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(PACKAGING / "airlock.service")
    assert unit["Service"]["ExecStart"] == "airlock tray"
    assert unit["Service"]["BusName"] == APP_ID  # the name portal/control.py owns
    assert unit["Install"]["WantedBy"] == "graphical-session.target"


def test_setup_starts_the_tray_for_the_demo() -> None:
    script = PACKAGING / "setup"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    body = text[text.index("start_demo_session() {") : text.index("main() {")]
    assert 'tray --prepare "$DEMO_PROFILE"' in body
    assert "\nDEMO_PROFILE=notes-organizer\n" in text  # unless `--engine podman` needs a copy
