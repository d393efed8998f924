"""The session lifecycle against the in-memory engine: the same supervisor as with Docker,
in milliseconds, so the order of events, the exit paths and the clean-up are checked on their
own (the real-engine tests are tests/app/test_sessions.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from app.container import LABEL_OWNER, LABEL_SESSION, LABEL_SUPERVISOR
from app.errors import ImageError
from app.events import Event, EventBus, EventKind
from app.grants import GrantRequest, Mode
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import SessionState, StateStore
from tests.app.sessions.memory_engine import KILLED, Agent, MemoryContainer, MemoryEngine
from tests.support import CollectedOutput, profile_text

IMAGE = "agent:test"


def supervise(
    dirs: Dirs, store: StateStore, agent: Agent
) -> tuple[Supervisor, MemoryEngine, list[Event]]:
    engine = MemoryEngine(agent)
    supervisor = Supervisor(engine, store, EventBus(), dirs, ProfileCatalog(dirs.user_profiles))
    events: list[Event] = []
    supervisor.bus.attach(events.append)
    return supervisor, engine, events


def request(
    grants: tuple[GrantRequest, ...] = (), timeout: float | None = None, image: str = IMAGE
) -> LaunchRequest:
    profile = parse_profile(profile_text(image, ["agent"]), "test.toml")
    return LaunchRequest(profile, Path("test.toml"), grants, timeout=timeout)


def lifecycle(events: list[Event]) -> list[EventKind]:
    return [
        e.kind
        for e in events
        if e.kind is not EventKind.SESSION_OUTPUT and not e.kind.startswith("file.")
    ]


def test_a_session_runs_its_agent_to_its_exit_and_cleans_up(
    dirs: Dirs, store: StateStore, tmp_path: Path
) -> None:
    def agent(container: MemoryContainer) -> int:
        container.write("stdout", b"hello\nfrom the ")
        container.write("stderr", b"oops\n")
        container.write("stdout", b"agent\n")
        return 7

    notes = tmp_path / "notes"
    notes.mkdir()
    supervisor, engine, events = supervise(dirs, store, agent)
    output = CollectedOutput()
    result = asyncio.run(supervisor.run(request((GrantRequest(notes, Mode.READ),)), output))
    assert result == SessionResult(result.session, 7, "exited with status 7")
    assert output.text("stdout") == "hello\nfrom the agent\n"
    assert output.text("stderr") == "oops\n"
    assert lifecycle(events) == [
        EventKind.GRANT_ADDED,
        EventKind.SANDBOX_VERIFIED,
        EventKind.SESSION_STARTED,
        EventKind.SESSION_EXITED,
    ]
    lines = [(e.subject, e.details["text"]) for e in events if e.kind is EventKind.SESSION_OUTPUT]
    assert sorted(lines) == [("stderr", "oops"), ("stdout", "from the agent"), ("stdout", "hello")]
    (container,) = [c for call, c in engine.calls if call == "create"]
    assert [call for call, c in engine.calls if c == container] == ["create", "start", "remove"]
    assert engine.containers_by_id == {}
    assert [g.ended for g in engine.guards] == [True]
    assert engine.guards[0].labels == (
        f"{LABEL_OWNER}={supervisor.owner}",
        f"{LABEL_SESSION}={result.session}",
    )
    record = store.session(result.session)
    assert record is not None and record.state is SessionState.EXITED and record.exit_code == 7
    assert not (dirs.sessions / result.session / "view").exists()
    assert supervisor.sessions.get(result.session) is None


def test_an_agent_past_its_timeout_is_stopped(dirs: Dirs, store: StateStore) -> None:
    supervisor, engine, events = supervise(
        dirs, store, lambda c: 0 if not c.wait_for_signal() else 1
    )
    result = asyncio.run(supervisor.run(request(timeout=0.2), CollectedOutput()))
    assert (result.exit_code, result.reason) == (124, "timed out")
    assert lifecycle(events) == [
        EventKind.SANDBOX_VERIFIED,
        EventKind.SESSION_STARTED,
        EventKind.SESSION_TIMEOUT,
        EventKind.SESSION_EXITED,
    ]
    assert "stop" in [call for call, _ in engine.calls]


def test_cancelling_the_run_removes_the_container_and_records_the_interruption(
    dirs: Dirs, store: StateStore
) -> None:
    supervisor, engine, events = supervise(dirs, store, lambda c: int(c.wait_for_signal()))

    async def scenario() -> str:
        run = asyncio.create_task(supervisor.run(request(), CollectedOutput()))
        while not any(e.kind is EventKind.SESSION_STARTED for e in events):
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return events[0].session or ""

    session = asyncio.run(scenario())
    assert engine.containers_by_id == {}
    record = store.session(session)
    assert record is not None and (record.exit_code, record.reason) == (130, "interrupted")


@pytest.mark.parametrize("cancelled", [False, True], ids=["exits", "is cancelled"])
def test_the_end_is_recorded_and_cleaned_up_before_it_is_announced(
    dirs: Dirs, store: StateStore, tmp_path: Path, cancelled: bool
) -> None:
    # Whoever reads the store on `session.exited` (the desktop app does) finds the session
    # ended, gone from the running ones, its counts kept and its container removed.
    supervisor, engine, events = supervise(
        dirs, store, lambda c: int(c.wait_for_signal()) if cancelled else 3
    )
    seen: list[tuple[object, ...]] = []

    def on_exit(event: Event) -> None:
        if event.kind is EventKind.SESSION_EXITED:
            session = event.session or ""
            record = store.session(session)
            assert record is not None
            seen.append(
                (
                    record.state,
                    record.exit_code,
                    session in supervisor.sessions,
                    store.activity(session) is not None,
                    engine.containers_by_id,
                )
            )

    supervisor.bus.attach(on_exit)

    async def scenario() -> None:
        run = asyncio.create_task(supervisor.run(request(), CollectedOutput()))
        if not cancelled:
            await run
            return
        while not any(e.kind is EventKind.SESSION_STARTED for e in events):
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(scenario())
    assert seen == [(SessionState.EXITED, 130 if cancelled else 3, False, True, {})]
    assert events[-1].kind is EventKind.SESSION_EXITED


def test_revoking_a_read_write_folder_kills_the_agent_and_says_why(
    dirs: Dirs, store: StateStore, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    supervisor, engine, events = supervise(dirs, store, lambda c: int(c.wait_for_signal()))

    async def scenario() -> SessionResult:
        run = asyncio.create_task(
            supervisor.run(request((GrantRequest(work, Mode.READ_WRITE),)), CollectedOutput())
        )
        while not any(e.kind is EventKind.SESSION_STARTED for e in events):
            await asyncio.sleep(0.01)
        session = events[-1].session or ""
        await supervisor.arevoke([g.id for g in store.session_grants(session, time.time())])
        return await asyncio.wait_for(run, 10)

    result = asyncio.run(scenario())
    assert (result.exit_code, result.reason) == (
        KILLED,
        "stopped: a read-write folder it was granted was revoked",
    )
    (revoked,) = [e for e in events if e.kind is EventKind.GRANT_REVOKED]
    assert revoked.details["stopped"] is True and revoked.subject == str(work)
    assert engine.volume_labels == {}  # the overlay volume went with the session


def test_a_revoked_read_only_folder_leaves_the_view_and_its_undo_brings_it_back(
    dirs: Dirs, store: StateStore, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("a\n")
    supervisor, _, events = supervise(dirs, store, lambda c: int(c.wait_for_signal()))

    async def scenario() -> list[bool]:
        run = asyncio.create_task(
            supervisor.run(request((GrantRequest(notes, Mode.READ),)), CollectedOutput())
        )
        while not any(e.kind is EventKind.SESSION_STARTED for e in events):
            await asyncio.sleep(0.01)
        session = events[-1].session or ""
        running = supervisor.sessions.get(session)
        assert running is not None
        shown = running.view.mirror_path(notes / "a.md")
        seen = [shown.exists()]
        (grant,) = store.session_grants(session, time.time())
        assert [g.id for g in await supervisor.arevoke([grant.id])] == [grant.id]
        seen.append(shown.exists())
        assert [g.id for g in await supervisor.arestore([grant.id])] == [grant.id]
        seen.append(shown.exists())
        assert store.session_grants(session, time.time()) == [grant]
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return seen

    assert asyncio.run(scenario()) == [True, False, True]
    changes = [
        (e.kind, e.details.get("restored"))
        for e in events
        if e.kind in (EventKind.GRANT_REVOKED, EventKind.GRANT_ADDED)
    ]
    assert changes == [
        (EventKind.GRANT_ADDED, None),
        (EventKind.GRANT_REVOKED, None),
        (EventKind.GRANT_ADDED, True),
    ]


def test_what_a_vanished_supervisor_left_is_swept_before_the_next_session(
    dirs: Dirs, store: StateStore
) -> None:
    supervisor, engine, events = supervise(dirs, store, lambda c: 0)
    left = engine.create(
        {
            "labels": {
                LABEL_OWNER: supervisor.owner,
                LABEL_SESSION: "0ld0ld00",
                LABEL_SUPERVISOR: "1:0",
            }
        }
    )  # pid 1 never started at 0
    engine.volume_labels["airlock-0ld0ld00-x"] = {
        LABEL_OWNER: supervisor.owner,
        LABEL_SUPERVISOR: "1:0",
    }
    result = asyncio.run(supervisor.run(request(), CollectedOutput()))
    assert result.exit_code == 0
    assert left not in engine.containers_by_id and engine.volume_labels == {}
    assert (events[0].kind, events[0].session) == (EventKind.SESSION_SWEPT, "0ld0ld00")


def test_a_missing_image_is_refused_before_anything_is_made(dirs: Dirs, store: StateStore) -> None:
    supervisor, engine, events = supervise(dirs, store, lambda c: 0)
    with pytest.raises(ImageError, match="airlock image build"):
        asyncio.run(supervisor.run(request(image="no-such:image"), CollectedOutput()))
    assert engine.calls == [] and engine.guards == [] and events == []
    assert store.sessions() == []
