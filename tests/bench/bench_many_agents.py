"""The load of issue 18: 20 agents started in parallel and 10 more while they run, each asking
a question through the portal, 5 killed from outside; once in the desktop app (`Desktop`, the
real supervisor, the Docker engine) and once through `airlock daemon` with `airlock run`
hand-offs. Every launch starts or fails within its timeout, every question is shown, every
killed session is shown ended; prints the figures (tests/loadfigures.py), asserts nothing
about time.

    .venv/bin/python -m pytest -m bench tests/bench/bench_many_agents.py -s
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import docker
import pytest

from tests.loadfigures import Figures
from tests.support import DesktopUser
from tests.ui.many_runs import daemon_load
from tests.ui.qt.conftest import loop, run, settings  # noqa: F401 - the desktop app's fixtures
from tests.ui.qt.many_agents import short_dirs, with_desktop
from ui.qt.settings import Settings

FIRST, MORE, KILLED = 20, 10, 5


@pytest.mark.bench
@pytest.mark.timeout(900)
def test_desktop_app_with_thirty_agents(
    run: Callable[..., object],  # noqa: F811
    settings: Settings,  # noqa: F811
    engine: docker.DockerClient,
    agent_image: str,
) -> None:
    with short_dirs() as dirs:
        figures: Figures = run(  # type: ignore[assignment]
            with_desktop(dirs, settings, engine, agent_image, FIRST, MORE, KILLED), timeout=800
        )
    print("\n" + figures.report())
    assert all(x.started is not None or x.failed for x in figures.launches)


@pytest.mark.bench
@pytest.mark.timeout(900)
def test_airlock_daemon_with_thirty_runs(
    tester: DesktopUser, engine: docker.DockerClient, agent_image: str
) -> None:
    figures = asyncio.run(
        asyncio.wait_for(daemon_load(tester, engine, agent_image, FIRST, MORE, KILLED), 800)
    )
    print("\n" + figures.report())
    assert all(x.started is not None or x.failed for x in figures.launches)
