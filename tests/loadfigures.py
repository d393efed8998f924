"""What the load tests of many agents share (the desktop app's and `airlock daemon`'s): the
asking agent, what they measured (per launch: asked for, started or failed, question shown,
killed, seen ending) and its report, which asserts nothing about time; killing an agent from
outside, and waiting for every container to be removed."""

from __future__ import annotations

import asyncio
import inspect
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker

from app.container import LABEL_ROLE, LABEL_SESSION
from tests.support import containers

# An agent that asks once through the FileChooser portal (the session's private bus), then
# runs on: the question stays pending until it is answered or the session ends.
ASK_THEN_RUN = r"""
n=0
until gdbus introspect --session --dest org.freedesktop.portal.Desktop \
    --object-path /org/freedesktop/portal/desktop >/dev/null 2>&1; do
  n=$((n+1)); [ $n -lt 1200 ] || { echo "no portal"; exit 3; }; sleep 0.05
done
gdbus call --session --dest org.freedesktop.portal.Desktop \
  --object-path /org/freedesktop/portal/desktop \
  --method org.freedesktop.portal.FileChooser.OpenFile "" "Pick the notes to summarise" \
  "{'handle_token': <'t1'>}" >/dev/null || exit 4
echo asked
exec sleep 600
"""

LAUNCH_TIMEOUT = 180.0  # a launch starts or fails within this, however busy the engine is


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Launch:
    asked: float  # monotonic
    session: str = ""
    started: float | None = None
    failed: str = ""
    question_shown: float | None = None
    killed: float | None = None
    ended: float | None = None


@dataclass
class Figures:
    """The launches of one run, in the order they were asked for."""

    what: str
    launches: list[Launch] = field(default_factory=list)

    def launch(self, asked: float) -> Launch:
        self.launches.append(Launch(asked))
        return self.launches[-1]

    def by_session(self, session: str) -> Launch | None:
        return next((x for x in self.launches if x.session == session), None)

    @property
    def started(self) -> list[Launch]:
        return [x for x in self.launches if x.started is not None]

    def unresolved(self, now: float) -> list[Launch]:
        """Launches neither started nor failed, past their timeout."""
        return [
            x
            for x in self.launches
            if x.started is None and not x.failed and now - x.asked > LAUNCH_TIMEOUT
        ]

    def report(self) -> str:
        starts = [x.started - x.asked for x in self.started if x.started is not None]
        first = min(x.asked for x in self.launches)
        last = max((x.started for x in self.started if x.started is not None), default=first)
        shown = [x for x in self.launches if x.question_shown is not None]
        to_question = [
            x.question_shown - x.started
            for x in shown
            if x.question_shown is not None and x.started is not None
        ]
        ends = [
            x.ended - x.killed
            for x in self.launches
            if x.killed is not None and x.ended is not None
        ]
        lines = [
            f"{self.what}: {len(self.launches)} launches, {len(starts)} started, "
            f"{sum(bool(x.failed) for x in self.launches)} failed",
            f"  time to all started: {last - first:.1f} s",
        ]
        if starts:
            lines.append(
                f"  per launch (asked to started): p50 {statistics.median(starts):.1f} s, "
                f"p95 {percentile(starts, 95):.1f} s, max {max(starts):.1f} s"
            )
        lines.append(f"  questions shown: {len(shown)} of {len(starts)}")
        if to_question:
            lines.append(
                f"  started to question shown: p50 {statistics.median(to_question):.1f} s, "
                f"max {max(to_question):.1f} s"
            )
        if ends:
            lines.append(
                f"  killed from outside: {len(ends)}, seen ended after p50 "
                f"{statistics.median(ends):.1f} s, max {max(ends):.1f} s"
            )
        return "\n".join(lines)


async def kill_agent(engine: docker.DockerClient, session: str) -> None:
    labels = (f"{LABEL_SESSION}={session}", f"{LABEL_ROLE}=agent")
    for container in await asyncio.to_thread(containers, engine, *labels):
        await asyncio.to_thread(engine.api.kill, container["Id"])


async def all_removed(engine: docker.DockerClient, sessions: list[str]) -> bool:
    """Whether no container of `sessions` is left (removal may finish after the end)."""
    every = await asyncio.to_thread(containers, engine, LABEL_SESSION)
    return not any(c["Labels"].get(LABEL_SESSION) in sessions for c in every)  # type: ignore[attr-defined]


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)
