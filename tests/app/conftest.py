"""Fixtures for the core's tests: a fresh audit directory and bus per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.events import EventBus


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "airlock" / "audit"


@pytest.fixture
def bus() -> EventBus:
    return EventBus()
