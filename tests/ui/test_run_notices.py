"""`airlock run` tells the person at the terminal when the file watch of a session had a
gap or is partly unwatched, and which hosts the agent was refused."""

from __future__ import annotations

import pytest

from app.events import Event, EventKind
from tests.support import DesktopUser, profile_text
from ui.commands.run import Notices, notice_text


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


def test_refusals_are_said_once_then_counted() -> None:
    notices = Notices()

    def refused(session: str, subject: str) -> str | None:
        return notices(Event(EventKind.NET_REFUSED, session, subject, {
            "rule": "not-listed", "reason": f"{subject} is not in the profile's network rules"}))

    said = [refused("s1", "api.openai.com:443") for _ in range(120)]
    assert [i + 1 for i, text in enumerate(said) if text] == [1, 10, 100]
    assert said[0] == ("refused api.openai.com:443: api.openai.com:443 is not in the profile's "
                       "network rules (not in the profile: allow it in its [network] section, "
                       "or add a route)")
    assert said[9] is not None and said[9].startswith("refused api.openai.com:443 ×10:")
    # Another host, and another session, are counted apart.
    assert refused("s1", "pypi.org:443") is not None
    assert refused("s2", "api.openai.com:443") is not None
    hidden = refused("s1", "evil\x1b[8m.test:80")
    assert hidden is not None and "\x1b" not in hidden


def test_direct_attempts_are_summed_up() -> None:
    notices = Notices()
    first = notices(Event(EventKind.NET_BLOCKED, "s1", "203.0.113.9:443", {"protocol": "tcp"}))
    assert first is not None and first.startswith("a direct attempt to leave around the proxy")
    assert notices(Event(EventKind.NET_BLOCKED, "s1", "*", {"count": 8})) is None
    many = notices(Event(EventKind.NET_BLOCKED, "s1", "*", {"count": 5}))
    assert many is not None and many.startswith("14 direct attempts")


@pytest.mark.docker
def test_the_terminal_hears_which_host_the_agent_was_refused(
    tester: DesktopUser, agent_image: str
) -> None:
    # Twelve refused requests from the agent: the first and the tenth are said, each once.
    script = ('for i in $(seq 12); do curl -s -o /dev/null --max-time 10 '
              'http://refused.test/; done; echo done')
    profile = tester.write("p.toml", profile_text(
        agent_image, ["sh", "-c", script], extra='[network]\nallow = ["allowed.test:443"]\n'))
    result = tester.run("run", "--in-process", "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    lines = [line for line in result.stderr.splitlines() if "refused.test:80" in line]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("airlock: refused refused.test:80: ")
    assert "not in the profile" in lines[0]
    assert lines[1].startswith("airlock: refused refused.test:80 ×10: ")
