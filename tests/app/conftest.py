"""Fixtures for the core's tests: fresh directories, state store, audit directory and bus per
test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.events import EventBus
from app.paths import Dirs
from app.store import StateStore


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "airlock" / "audit"


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    return dirs


@pytest.fixture
def store(dirs: Dirs) -> Iterator[StateStore]:
    store = StateStore(dirs.database)
    yield store
    store.close()
