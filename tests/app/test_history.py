"""The sessions' history: output kept within its bound, counts, bounds, forgetting; and a
real container session whose record, output and counts outlive it and the store that saw
it end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import docker
import pytest

from app.errors import SessionError
from app.events import Event, EventBus, EventKind
from app.grants import GrantRequest, Mode
from app.history import (
    ActivityTally,
    History,
    HistoryBounds,
    HostUse,
    OutputLog,
    SessionActivity,
    plain_text,
    read_output,
    to_forget,
)
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, Supervisor
from app.store import SessionRecord, SessionState, StateStore
from tests.support import CollectedOutput, profile_text

DAY = 86400.0
NOW = 1_000_000_000.0


def ended(session: str, days_ago: float) -> SessionRecord:
    at = NOW - days_ago * DAY
    return SessionRecord(
        session, "p", "img", None, "1:1", SessionState.EXITED, at - 60, at, 0, "exited normally"
    )


@pytest.mark.parametrize(
    ("ages", "bounds", "waiting", "forgotten"),
    [
        ({"a": 1, "b": 2}, HistoryBounds(200, 30), set(), []),
        ({"a": 1, "b": 2, "c": 3}, HistoryBounds(2, 30), set(), ["c"]),  # the oldest goes
        ({"a": 1, "b": 31}, HistoryBounds(200, 30), set(), ["b"]),  # too old
        ({"a": 1, "b": 31}, HistoryBounds(200, 30), {"b"}, []),  # its changes wait: kept
        ({"a": 5, "b": 1, "c": 3}, HistoryBounds(1, 30), {"c"}, ["a"]),
    ],
)
def test_the_history_keeps_the_latest_sessions_within_its_days(
    ages: dict[str, float], bounds: HistoryBounds, waiting: set[str], forgotten: list[str]
) -> None:
    records = [ended(s, age) for s, age in ages.items()]
    assert to_forget(records, NOW, bounds, waiting) == forgotten


def test_a_running_session_is_never_forgotten() -> None:
    running = SessionRecord("r", "p", "img", None, "1:1", SessionState.RUNNING, NOW - 90 * DAY)
    assert to_forget([running, ended("a", 1)], NOW, HistoryBounds(1, 30), set()) == []


def test_output_is_kept_within_its_bound_with_a_line_saying_what_was_cut(tmp_path: Path) -> None:
    kept = OutputLog(tmp_path / "out", limit=64 * 1024)
    lines = [f"line {i:06d} " + "x" * 50 + "\n" for i in range(20_000)]  # about 1.2 MiB
    for i, line in enumerate(lines):
        kept.write("stderr" if i % 10 == 0 else "stdout", line.encode())
    kept.close()
    output = read_output(tmp_path / "out")
    total = sum(len(line) for line in lines)
    assert output.kept <= 64 * 1024
    assert output.kept + output.cut == total
    text = output.text()
    assert text.startswith("[… the first 1.") and "are not kept" in text.splitlines()[0]
    assert text.endswith(lines[-1])  # the end is what is kept
    assert ("stderr", lines[-10].encode()) in output.pieces  # streams told apart


def test_output_cut_short_by_a_crash_reads_up_to_the_last_whole_piece(tmp_path: Path) -> None:
    kept = OutputLog(tmp_path / "out")
    kept.write("stdout", b"whole\n")
    kept.write("stdout", b"torn piece\n")
    kept.close()
    segment = tmp_path / "out" / "output.1"
    segment.write_bytes(segment.read_bytes()[:-3])
    assert read_output(tmp_path / "out").text() == "whole\n"
    assert read_output(tmp_path / "nothing").text() == ""


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain\n", "plain\n"),
        (b"\x1b[31mred\x1b[0m\n", "red\n"),
        (b"\x1b]0;title\x07after", "after"),
        (b"10%\r50%\r100%\n", "100%\n"),
        (b"bell\x07 nul\x00", "bell\\u0007 nul\\u0000"),
        (b"\xff", "\ufffd"),
    ],
)
def test_output_is_shown_as_plain_text(raw: bytes, shown: str) -> None:
    assert plain_text(raw) == shown


def test_the_tally_counts_requests_hosts_bytes_files_and_questions() -> None:
    tally = ActivityTally()
    events = [
        Event(EventKind.NET_REQUEST, "s", "a.example:443", {"host": "a.example", "bytes_up": 10}),
        Event(EventKind.NET_TUNNEL, "s", "a.example:443", {"host": "a.example", "bytes_up": 5}),
        Event(EventKind.NET_REFUSED, "s", "b.example:80", {"host": "b.example", "bytes_up": 0}),
        Event(EventKind.FILE_READ, "s", "/x"),
        Event(EventKind.FILE_WRITTEN, "s", "/y"),
        Event(EventKind.REQUEST_ASKED, "s", "q"),
        Event(EventKind.NET_REQUEST, "other", "c.example:443", {"host": "c.example"}),
    ]
    for event in events:
        tally(event)
    activity = tally.take("s")
    assert activity == SessionActivity(
        requests=3,
        refused=1,
        bytes_up=15,
        hosts=(HostUse("a.example", 2, 0, 15, 0), HostUse("b.example", 1, 1, 0, 0)),
        reads=1,
        writes=1,
        questions=1,
    )
    assert SessionActivity.from_json(activity.to_json()) == activity
    assert tally.take("s") == SessionActivity()


# a real session


@pytest.mark.docker
def test_an_ended_session_keeps_its_record_output_and_counts_across_a_restart(
    dirs: Dirs, store: StateStore, engine: docker.DockerClient, agent_image: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.txt").write_text("the plan\n")
    History(store, dirs).set_bounds(HistoryBounds(output=32 * 1024))
    # "last words" is the last thing written, and a moment before the exit: in two loaded CI
    # runs the engine's attach stream lost a final stderr line written as the process
    # ended: a loss of its own, left open (what is kept is not what this test is about).
    script = (
        f"cat {notes}/plan.txt; sleep 0.5; "
        "python3 -c \"import sys, time; [print('line %05d' % i + ' y' * 20) for i in range(4000)]; "
        "sys.stdout.flush(); print('last words', file=sys.stderr); time.sleep(0.5)\"; exit 3"
    )
    profile = parse_profile(profile_text(agent_image, ["sh", "-c", script]), "test.toml")
    bus = EventBus()
    supervisor = Supervisor(engine, store, bus, dirs, ProfileCatalog(dirs.user_profiles))

    def as_the_proxy(event: Event) -> None:
        # The egress proxy's events for this session, as it would publish them.
        if event.kind is EventKind.SESSION_STARTED:
            for size in (100, 250):
                bus.emit(
                    EventKind.NET_REQUEST,
                    event.session,
                    "api.example:443",
                    host="api.example",
                    bytes_up=size,
                    bytes_down=7,
                )

    bus.attach(as_the_proxy)
    started = time.time()
    result = asyncio.run(
        supervisor.run(
            LaunchRequest(profile, Path("test.toml"), (GrantRequest(notes, Mode.READ),)),
            CollectedOutput(),
        )
    )
    assert result.exit_code == 3
    asyncio.run(supervisor.aclose())
    store.close()

    reopened = StateStore(dirs.database)  # as after a restart of the app
    try:
        history = History(reopened, dirs)
        summary = history.summary(result.session)
        assert summary.record.state is SessionState.EXITED
        assert summary.record.exit_code == 3
        assert summary.duration is not None and 0 < summary.duration < time.time() - started + 1
        assert [(g.path, g.mode) for g in summary.grants] == [(notes, Mode.READ)]
        assert summary.grants[0].inside == str(notes)
        activity = summary.activity
        assert (activity.requests, activity.bytes_up, activity.bytes_down) == (2, 350, 14)
        assert activity.hosts == (HostUse("api.example", 2, 0, 350, 14),)
        assert activity.reads >= 1  # plan.txt, seen by the watch on its view
        assert summary.waiting == 0 and summary.commits == 0
        output = history.output(result.session)
        assert 0 < output.kept <= 32 * 1024 and output.cut > 4000 * 40 - 32 * 1024
        text = output.text()
        assert "are not kept" in text.splitlines()[0]
        assert "line 03999" in text and "the plan" not in text  # its start was cut
        assert ("stderr", b"last words\n") in output.pieces

        with pytest.raises(SessionError, match="not a session id"):
            history.output("../x")
        history.forget(result.session)
        assert reopened.session(result.session) is None
        assert not history.output_dir(result.session).exists()
        assert reopened.activity(result.session) is None
    finally:
        reopened.close()
