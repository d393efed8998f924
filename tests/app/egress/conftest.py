"""Fixtures for the egress tests: a test CA, a real Secret Service (see tests/netsupport)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netsupport import ca, secret_service

__all__ = ["ca", "secret_service"]


@pytest.fixture
def secret_index(tmp_path: Path) -> Path:
    return tmp_path / "config" / "secrets"
