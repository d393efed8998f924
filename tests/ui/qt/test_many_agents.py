"""The desktop app with many agents at once, on the real engine (a small run of the load in
tests/bench/bench_many_agents.py): every launch starts or fails within its timeout, every
agent's question is in the queue, sessions killed from outside are shown ended and their
questions withdrawn, and nothing is left behind."""

from __future__ import annotations

from collections.abc import Callable

import docker
import pytest

from tests.loadfigures import Figures
from tests.ui.qt.many_agents import short_dirs, with_desktop
from ui.qt.settings import Settings

pytestmark = pytest.mark.docker


def test_six_then_three_agents_each_asking_two_killed(
    run: Callable[..., object], settings: Settings, engine: docker.DockerClient, agent_image: str
) -> None:
    with short_dirs() as dirs:
        figures: Figures = run(
            with_desktop(dirs, settings, engine, agent_image, 6, 3, 2), timeout=400
        )
    print("\n" + figures.report())
    launches = figures.launches
    assert len(launches) == 9 and all(x.started is not None for x in launches), [
        x.failed for x in launches
    ]
