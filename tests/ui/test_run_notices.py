"""`airlock run` tells the person at the terminal when the file watch of a session had a
gap or is partly unwatched."""

from __future__ import annotations

import pytest

from app.events import Event, EventKind
from ui.commands.run import notice_text


@pytest.mark.parametrize(("kind", "details", "expected"), [
    (EventKind.ACTIVITY_GAP,
     {"cause": "inotify queue overflowed", "seconds": 2.345, "rescanned": 3},
     "session s1: file activity went unwatched for 2.3 s (inotify queue overflowed); "
     "rescanned: 3 change(s) in that time"),
    (EventKind.ACTIVITY_GAP,
     {"cause": "the inotify reader thread died: KeyError: b'x\x1b[8m'", "seconds": 0.2,
      "rescanned": 0},
     "session s1: file activity went unwatched for 0.2 s (the inotify reader thread died: "
     "KeyError: b'x\\u001b[8m'); rescanned: 0 change(s) in that time"),
    (EventKind.ACTIVITY_UNWATCHED, {"overflows": 3},
     "session s1 is partly unwatched: its file activity overflowed the watch 3 times"),
])
def test_watch_gaps_are_noticed(kind: EventKind, details: dict[str, object],
                                expected: str) -> None:
    assert notice_text(Event(kind, "s1", "file activity", details)) == expected
