"""`airlock daemon` with many `airlock run` hand-offs at once, on the real engine (a small run
of the load in tests/bench/bench_many_agents.py): every launch starts or fails within its
timeout, every agent's question is listed by `airlock ask`, the callers of sessions killed from
outside hear the end and the list shows them ended, and nothing is left behind."""

from __future__ import annotations

import asyncio

import docker
import pytest

from tests.support import DesktopUser
from tests.ui.many_runs import daemon_load

pytestmark = pytest.mark.docker


def test_four_then_two_runs_each_asking_two_killed(
    tester: DesktopUser, engine: docker.DockerClient, agent_image: str
) -> None:
    figures = asyncio.run(asyncio.wait_for(daemon_load(tester, engine, agent_image, 4, 2, 2), 400))
    print("\n" + figures.report())
    assert all(x.started is not None for x in figures.launches), [
        x.failed for x in figures.launches
    ]
