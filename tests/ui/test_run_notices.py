"""`airlock run` tells the person at the terminal when the file watch of a session had a
gap or is partly unwatched, which hosts the agent was refused, which uploads are held and
what became of them, and which of its requests were denied."""

from __future__ import annotations

import pytest

from app.engine_kind import EngineKind
from app.events import Event, EventKind
from app.weaker import warning
from tests.support import DesktopUser, profile_text
from tests.ui.test_handoff import daemon
from ui.notices import Notices, notice_text

__all__ = ["daemon"]  # the fixture, for the hand-off case


@pytest.mark.parametrize(
    ("kind", "details", "expected"),
    [
        (
            EventKind.ACTIVITY_GAP,
            {"cause": "inotify queue overflowed", "seconds": 2.345, "rescanned": 3},
            "session s1: file activity went unwatched for 2.3 s (inotify queue overflowed); "
            "rescanned: 3 change(s) in that time",
        ),
        (
            EventKind.ACTIVITY_GAP,
            {
                "cause": "the inotify reader thread died: KeyError: b'x\x1b[8m'",
                "seconds": 0.2,
                "rescanned": 0,
            },
            "session s1: file activity went unwatched for 0.2 s (the inotify reader thread died: "
            "KeyError: b'x\\u001b[8m'); rescanned: 0 change(s) in that time",
        ),
        (
            EventKind.ACTIVITY_UNWATCHED,
            {"overflows": 3},
            "session s1 is partly unwatched: its file activity overflowed the watch 3 times",
        ),
    ],
)
def test_watch_gaps_are_noticed(kind: EventKind, details: dict[str, object], expected: str) -> None:
    assert notice_text(Event(kind, "s1", "file activity", details)) == expected


def test_refusals_are_said_once_then_counted() -> None:
    notices = Notices()

    def refused(session: str, subject: str) -> str | None:
        return notices(
            Event(
                EventKind.NET_REFUSED,
                session,
                subject,
                {
                    "rule": "not-listed",
                    "reason": f"{subject} is not in the profile's network rules",
                },
            )
        )

    said = [refused("s1", "api.openai.com:443") for _ in range(120)]
    assert [i + 1 for i, text in enumerate(said) if text] == [1, 10, 100]
    assert said[0] == (
        "refused api.openai.com:443: api.openai.com:443 is not in the profile's "
        "network rules (not in the profile: allow it in its [network] section, "
        "or add a route)"
    )
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


def asked(session: str, subject: str, asks: str, **details: object) -> Event:
    return Event(
        EventKind.REQUEST_ASKED,
        session,
        subject,
        {"request": "r-1", "asks": asks, "timeout": 120.0, **details},
    )


def answered(
    session: str, subject: str, asks: str, verdict: str, by: str, at: float = 1000.0
) -> Event:
    return Event(
        EventKind.REQUEST_ANSWERED,
        session,
        subject,
        {
            "request": "r-1",
            "asks": asks,
            "verdict": verdict,
            "by": by,
            "lifetime": "once",
            "paths": [],
        },
        time=at,
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            asked("s1", "api.example:443", "network.upload", size=300_000),
            "holding an upload of 292 KB to api.example:443 until it is approved (denied in 120 s "
            "without an answer)",
        ),
        (asked("s1", "open a file", "file.open"), None),  # the prompt or dialog says it
        (
            answered("s1", "api.example:443", "network.upload", "allow", "tty"),
            "upload to api.example:443 allowed (you approved)",
        ),
        (
            answered("s1", "api.example:443", "network.upload", "deny", "timeout"),
            "upload to api.example:443 denied (no answer in time): the agent got a refusal",
        ),
        (
            answered("s1", "open a file", "file.open", "deny", "timeout"),
            "denied the agent's request to open a file (no answer in time)",
        ),
        (
            answered("s1", "save a file", "file.save", "deny", "deny-all"),
            "denied the agent's request to save a file (--ask deny: nobody answers)",
        ),
        (
            answered("s1", "docs.example:443", "network.host", "deny", "dialog"),
            "denied the agent's request for docs.example:443 (you said no)",
        ),
        (answered("s1", "open a file", "file.open", "allow", "tty"), None),
        (
            answered("s1", "x\x1b[2J:443", "network.host", "deny", "no front end"),
            "denied the agent's request for x\\u001b[2J:443 (nobody to ask)",
        ),
    ],
)
def test_held_uploads_and_denied_requests_are_said(event: Event, expected: str | None) -> None:
    assert Notices()(event) == expected


def test_denials_are_counted_and_their_refusal_is_not_said_twice() -> None:
    notices = Notices()
    said = [
        notices(answered("s1", "open a file", "file.open", "deny", "deny-all")) for _ in range(12)
    ]
    assert [i + 1 for i, text in enumerate(said) if text] == [1, 10]
    assert said[9] == ("denied the agent's request to open a file ×10 (--ask deny: nobody answers)")
    held = [notices(asked("s1", "up.example:443", "network.upload")) for _ in range(10)]
    assert [i + 1 for i, text in enumerate(held) if text] == [1, 10]
    # The proxy refuses the connection whose upload or host was denied: said once, as a denial.
    assert notices(answered("s1", "up.example:443", "network.upload", "deny", "timeout"))
    refusal = Event(
        EventKind.NET_REFUSED,
        "s1",
        "up.example:443",
        {"rule": "upload-refused", "reason": "the upload was not approved"},
        time=1001.0,
    )
    assert notices(refusal) is None
    assert notices(answered("s1", "ask.example:443", "network.host", "deny", "tty"))
    assert (
        notices(
            Event(
                EventKind.NET_REFUSED,
                "s1",
                "ask.example:443",
                {"rule": "ask", "reason": "not approved"},
                time=1000.5,
            )
        )
        is None
    )
    # A refusal long after, or of another session, is news again.
    later = Event(
        EventKind.NET_REFUSED,
        "s1",
        "up.example:443",
        {"rule": "upload-refused", "reason": "again"},
        time=2000.0,
    )
    assert notices(later) == "refused up.example:443: again"


@pytest.mark.docker
def test_the_terminal_hears_which_host_the_agent_was_refused(
    tester: DesktopUser, agent_image: str
) -> None:
    # Twelve refused requests from the agent: the first and the tenth are said, each once.
    script = (
        "for i in $(seq 12); do curl -s -o /dev/null --max-time 10 "
        "http://refused.test/; done; echo done"
    )
    profile = tester.write(
        "p.toml",
        profile_text(
            agent_image, ["sh", "-c", script], extra='[network]\nallow = ["allowed.test:443"]\n'
        ),
    )
    result = tester.run("run", "--in-process", "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    lines = [line for line in result.stderr.splitlines() if "refused.test:80" in line]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("airlock: refused refused.test:80: ")
    assert "not in the profile" in lines[0]
    assert lines[1].startswith("airlock: refused refused.test:80 ×10: ")


# An upload past the profile's threshold to a host it allows, then a request for a file
# through the portal, in a session nobody answers for (--ask deny).
HELD_AND_DENIED = (
    "head -c 20000 /dev/zero | tr '\\0' a > /tmp/up; "
    "curl -s -o /dev/null -w 'upload:%{http_code}\\n' --max-time 20 --noproxy '' "
    "--data-binary @/tmp/up http://localhost:9/notes; "
    "gdbus call --session --dest org.freedesktop.portal.Desktop "
    "--object-path /org/freedesktop/portal/desktop "
    "--method org.freedesktop.portal.FileChooser.OpenFile '' 'the plan' '{}' >/dev/null; "
    "sleep 2; echo done"
)


@pytest.mark.docker
@pytest.mark.parametrize("where", ["in-process", "handed-off"])
def test_the_terminal_hears_of_held_uploads_and_denied_requests(
    tester: DesktopUser, agent_image: str, where: str, request: pytest.FixtureRequest
) -> None:
    if where == "handed-off":
        request.getfixturevalue("daemon")
    profile = tester.write(
        "p.toml",
        profile_text(
            agent_image,
            ["sh", "-c", HELD_AND_DENIED],
            extra='[network]\nallow_private = true\nallow = ["localhost:9"]\n'
            '[approval]\nuploads = "ask"\nupload_threshold = "1k"\n',
        ),
    )
    flags = ["--in-process"] if where == "in-process" else []
    result = tester.run("run", *flags, "--ask", "deny", "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    assert "upload:403" in result.stdout and "done" in result.stdout, result.stdout + result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("airlock: ")]
    assert (
        "airlock: holding an upload of 19 KB to localhost:9 until it is approved "
        "(denied in 120 s without an answer)"
    ) in said, result.stderr
    assert (
        "airlock: upload to localhost:9 denied (--ask deny: nobody answers): the agent "
        "got a refusal"
    ) in said, result.stderr
    assert (
        "airlock: denied the agent's request to open a file (--ask deny: nobody answers)"
    ) in said, result.stderr
    # The proxy's refusal of that upload is the same news: not said again.
    assert not any(line.startswith("airlock: refused localhost:9") for line in said), said


def test_a_weaker_sandbox_is_said_at_the_terminal() -> None:
    """A session the profile let run without its limits says so each time; a verified one
    says nothing (`airlock run` prints what `notice_text` returns)."""
    text = warning(EngineKind("podman", "4.3.1", rootless=True, cgroup="1"), ("limits",))
    weaker = Event(
        EventKind.SANDBOX_VERIFIED,
        "s1",
        "s1",
        {"checks": 60, "weaker": ["limits"], "warning": text},
    )
    assert Notices()(weaker) == (
        "session s1: sandbox weaker than asked: rootless Podman 4.3.1 (cgroup v1) does not "
        "enforce memory, pids and CPU limits and ulimits (accepted by the profile: [sandbox] "
        "accept_weaker)"
    )
    assert notice_text(Event(EventKind.SANDBOX_VERIFIED, "s1", "s1", {"checks": 60})) is None
