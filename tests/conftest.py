"""Fixtures shared by the whole suite: the real engine, the agent image, the unprivileged user.

A missing component fails the test that needs it, with what to do; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from app.engine import connect_engine
from app.errors import EngineError
from tests.support import DEFAULT_IMAGE, DesktopUser, make_tester


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = connect_engine(timeout=60)
    except EngineError as e:
        pytest.fail(f"these tests need a Docker engine: {e} (`packaging/setup test` starts one)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def agent_image(engine: docker.DockerClient) -> str:
    try:
        engine.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"the agent image {DEFAULT_IMAGE} is missing: run `airlock image build`")
    return DEFAULT_IMAGE


@pytest.fixture
def tester(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DesktopUser]:
    yield from make_tester(request, tmp_path)
