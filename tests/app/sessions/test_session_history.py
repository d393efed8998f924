"""A session's place in the history (app/sessions/history.py): its output log bounded as the
preferences say, its counts taken from the bus, and at its end all of it kept, or nothing of a
session that was never recorded; the history trimmed to its bounds."""

from __future__ import annotations

from app.events import EventBus, EventKind
from app.history import HistoryBounds, SessionActivity
from app.paths import Dirs
from app.sessions.history import SessionHistory
from app.store import SessionRecord, SessionState, StateStore


def record(store: StateStore, session: str, at: float) -> None:
    store.add_session(SessionRecord(session, "p", "img", None, "1:1", SessionState.STARTING, at))
    store.end_session(session, SessionState.EXITED, 0, "exited normally")


def test_an_ended_session_keeps_its_output_and_counts_and_the_oldest_goes(
    dirs: Dirs, store: StateStore
) -> None:
    bus = EventBus()
    kept = SessionHistory(store, dirs, bus)
    kept.history.set_bounds(HistoryBounds(sessions=1, output=1024))
    record(store, "0ld", 1.0)
    kept.keep("0ld", kept.open("0ld"))

    output = kept.open("new")
    output.write("stdout", b"x" * 4000)
    bus.emit(EventKind.FILE_READ, "new", "/notes/a.md")
    bus.emit(EventKind.NET_REQUEST, "new", "a.example:443", host="a.example", bytes_up=5)
    assert kept.tally.activity("new").reads == 1  # counted while it runs
    record(store, "new", 2.0)
    kept.keep("new", output)

    assert kept.history.activity("new") == kept.history.summary("new").activity
    assert (kept.history.activity("new").reads, kept.history.activity("new").requests) == (1, 1)
    assert kept.tally.activity("new") == SessionActivity()  # taken at its end
    assert 0 < kept.history.output("new").kept <= 1024  # bounded as the preferences say
    assert store.session("0ld") is None  # one session is kept: the older went
    assert not kept.history.output_dir("0ld").exists()


def test_a_session_never_recorded_leaves_nothing(dirs: Dirs, store: StateStore) -> None:
    bus = EventBus()
    kept = SessionHistory(store, dirs, bus)
    output = kept.open("failed")
    output.write("stderr", b"no image\n")
    bus.emit(EventKind.FILE_READ, "failed", "/x")
    kept.keep("failed", output)
    assert not kept.history.output_dir("failed").exists()
    assert kept.tally.activity("failed") == SessionActivity()
