"""Airlock's own icons (SVG), found beside this module so they work from a checkout too."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QIcon

ICONS = Path(__file__).resolve().parent


def icon(name: str) -> QIcon:
    return QIcon(str(ICONS / f"{name}.svg"))
