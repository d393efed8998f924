"""The blocking detector itself (tests/loopwatch.py): a callback that blocks its loop is caught
and located; short ones are not."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import LOOP_BLOCK_SECONDS
from tests.loopwatch import LoopWatch


def sleeps_on_the_loop() -> None:
    time.sleep(LOOP_BLOCK_SECONDS * 2)  # a blocking call, as a locked database would be


def test_a_callback_that_blocks_its_loop_is_caught_with_where_it_was(loop_watch: LoopWatch) -> None:
    async def scenario() -> None:
        await asyncio.sleep(0)
        sleeps_on_the_loop()

    asyncio.run(scenario())
    blocked, loop_watch.blocked = loop_watch.blocked, []  # caught: this test must not fail
    assert len(blocked) == 1
    (caught,) = blocked
    assert caught.seconds >= LOOP_BLOCK_SECONDS * 1.5
    assert "scenario" in caught.callback
    assert any("sleeps_on_the_loop" in line for line in caught.where), caught.describe()


def test_a_loop_doing_short_work_is_not(loop_watch: LoopWatch) -> None:
    async def scenario() -> None:
        for _ in range(50):
            await asyncio.sleep(0.001)
            sum(range(10_000))

    asyncio.run(scenario())
    assert loop_watch.blocked == []
    assert loop_watch.worst < LOOP_BLOCK_SECONDS
