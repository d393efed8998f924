"""Fixtures shared by the whole suite: the real engine, the agent image, the unprivileged user,
and the blocking detector every test runs under (tests/loopwatch.py).

A missing component fails the test that needs it, with what to do; nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from app.engine import connect_engine
from app.errors import EngineError
from app.events import Event, EventBus, EventKind
from tests.loopwatch import LoopWatch
from tests.support import (
    DEFAULT_IMAGE,
    SANDBOX_RECORDS,
    DesktopUser,
    engine_environment,
    engine_host_under_test,
    limits_dropped_by_engine_under_test,
    make_tester,
)

# How long one callback may hold an event loop. Measured over the async tests (app/sessions,
# sessions, events, consent, activity, portal, prompt, egress, hand-off, Qt) on the 2-core
# machine shared with five other suites, run delay and garbage collection taken out
# (tests/loopwatch.py): the longest legitimate hold was 75 ms (2000 output lines turned into
# events and audit records in one callback), the next ones under 45 ms. A revocation or a
# locked SQLite call on the loop holds it 80-450 ms and more. Set AIRLOCK_LOOP_BLOCK_MS to
# try another value; AIRLOCK_LOOP_REPORT=FILE writes every test's longest hold.
LOOP_BLOCK_SECONDS = float(os.environ.get("AIRLOCK_LOOP_BLOCK_MS", "100")) / 1000

# Tests that may block a loop, each with why; none today. (The egress relay held the loop
# 90-1070 ms while a transfer's data was always ready, until it took turns: aio.Turns.)
BLOCKING_KNOWN: dict[str, str] = {}


@pytest.fixture(scope="session")
def loop_watch() -> Iterator[LoopWatch]:
    watch = LoopWatch(LOOP_BLOCK_SECONDS)
    watch.install()
    yield watch
    watch.uninstall()


@pytest.fixture(autouse=True)
def no_blocked_loop(request: pytest.FixtureRequest, loop_watch: LoopWatch) -> Iterator[None]:
    """Fails the test if any event loop it ran was blocked (see tests/loopwatch.py). A test
    that must block one says so, and why, with `@pytest.mark.blocks_loop("why")`."""
    loop_watch.reset()
    yield
    report = os.environ.get("AIRLOCK_LOOP_REPORT")
    if report:  # for choosing the threshold: every test's longest hold
        with open(report, "a") as f:
            f.write(f"{loop_watch.worst * 1000:.1f} {request.node.nodeid}\n")
    known = BLOCKING_KNOWN.get(request.node.nodeid.partition("[")[0])
    if (
        loop_watch.blocked
        and known is None
        and request.node.get_closest_marker("blocks_loop") is None
    ):
        pytest.fail(
            f"an event loop was blocked for more than {LOOP_BLOCK_SECONDS * 1000:.0f} "
            "ms:\n" + "\n".join(b.describe() for b in loop_watch.blocked),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def weaker_sandbox_is_said(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """On an engine that drops the resource limits (rootless Podman on cgroup v1), the
    tests marked `engines` run with profiles that accept that (tests/support.py): every
    session they start must then have said so — in its `sandbox.verified` event here, and in
    the tester's audit log for the sessions its `airlock` commands ran."""
    if request.node.get_closest_marker("engines") is None or not (
        limits_dropped_by_engine_under_test()
    ):
        yield
        return
    seen: list[dict[str, object]] = []
    publish = EventBus.publish

    def recording(bus: EventBus, event: Event) -> None:
        if event.kind is EventKind.SANDBOX_VERIFIED:
            seen.append(dict(event.details))
        publish(bus, event)

    monkeypatch.setattr(EventBus, "publish", recording)
    yield
    seen += request.node.stash.get(SANDBOX_RECORDS, [])
    assert seen, "no session was verified on the engine under test"
    for details in seen:
        assert details.get("weaker") == ["limits"], details
        assert "does not enforce memory, pids and CPU limits" in str(details.get("warning"))


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    """The engine under test: Docker, or with AIRLOCK_TEST_ENGINE=podman the tester's
    rootless Podman service (tests/support.py: `engine_host_under_test`)."""
    # DOCKER_HOST stays set for the session: what the tests start (the reaper) reaches the
    # same engine.
    with engine_environment(engine_host_under_test()):
        try:
            client = connect_engine(timeout=60)
        except EngineError as e:
            pytest.fail(
                f"these tests need a container engine: {e} (`packaging/setup test` "
                "starts Docker; `packaging/setup podman USER` a rootless Podman)"
            )
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
