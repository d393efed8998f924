"""What "Revoke all of its access" and "Revoke everything" take from whom, and say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.grants import Access, AnyGrant, Grant, Lifetime, Mode, NetworkGrant
from ui.revoke_plan import (
    Held,
    Loss,
    confirm_everything,
    confirm_session,
    losses,
    of_session,
    revoked_text,
    takes_away,
)

NAMES = {"aaaa1111": "codex · aaaa", "bbbb2222": "aider · bbbb"}


def name(session: str) -> str:
    return NAMES[session]


def file(gid: str, mode: Mode = Mode.READ, session: str | None = "aaaa1111") -> Grant:
    profile = None if session else "codex"
    return Grant(gid, Path(f"/home/u/{gid}"), mode, Lifetime.SESSION, session, profile, 0.0)


def host(gid: str, allowed: bool = True, session: str | None = "aaaa1111") -> NetworkGrant:
    profile = None if session else "codex"
    lifetime = Lifetime.SESSION if session else Lifetime.ALWAYS
    return NetworkGrant(
        gid, "api.test", 443, Access.CONNECT, allowed, lifetime, session, profile, 0.0
    )


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        ([], []),
        ([Held(file("f"), ("aaaa1111",))], [Loss("aaaa1111", files=1)]),
        ([Held(file("d"), ("aaaa1111",), folder=True)], [Loss("aaaa1111", folders=1)]),
        (
            [Held(file("d", Mode.READ_WRITE), ("aaaa1111",), folder=True)],
            [Loss("aaaa1111", folders=1, stopped=True)],
        ),
        # A read-write file is withdrawn, not a stop.
        ([Held(file("f", Mode.READ_WRITE), ("aaaa1111",))], [Loss("aaaa1111", files=1)]),
        (
            [
                Held(host("n"), ("aaaa1111",)),
                Held(file("p", session=None), ("aaaa1111", "bbbb2222")),
            ],
            [Loss("aaaa1111", files=1, hosts=1), Loss("bbbb2222", files=1)],
        ),
        # No running agent has it: nobody loses it now.
        ([Held(file("p", session=None), ())], []),
    ],
)
def test_what_each_agent_loses(held: list[Held], expected: list[Loss]) -> None:
    assert losses(held) == expected


def test_a_session_s_access_is_its_own_and_its_profile_s_never_a_refusal() -> None:
    grants: list[AnyGrant] = [
        file("own"),
        file("other", session="bbbb2222"),
        file("profile", session=None),
        host("host"),
        host("refusal", allowed=False),
        host("profile-host", session=None),
    ]
    assert [g.id for g in of_session("aaaa1111", "codex", grants)] == [
        "own",
        "profile",
        "host",
        "profile-host",
    ]
    assert [g.id for g in of_session("bbbb2222", "aider", grants)] == ["other"]
    assert not takes_away(host("r", allowed=False)) and takes_away(host("h"))


def test_the_session_confirmation_names_each_agent_and_the_stop() -> None:
    held = [
        Held(file("d", Mode.READ_WRITE), ("aaaa1111",), folder=True),
        Held(file("f"), ("aaaa1111",)),
        Held(host("n"), ("aaaa1111",)),
        Held(file("p", session=None), ("aaaa1111", "bbbb2222")),
    ]
    asked = confirm_session("aaaa1111", held, name, 8)
    assert asked.question == "Revoke everything codex · aaaa was given (4 grants)?"
    assert asked.detail.splitlines()[:2] == [
        "•  codex · aaaa loses 2 files, 1 folder and 1 host and is stopped (a read-write folder)",
        "•  aider · bbbb loses 1 file",
    ]
    assert "cannot be taken back from a running agent" in asked.detail
    assert asked.detail.endswith("For 8 seconds after, Undo gives it all back.")
    assert asked.button == "&Revoke all and &stop the agent" and asked.stops


def test_the_everything_confirmation() -> None:
    held = [
        Held(file("f"), ("aaaa1111",)),
        Held(host("n", session="bbbb2222"), ("bbbb2222",)),
        Held(file("later", session=None), ()),
    ]
    asked = confirm_everything(held, name, 8)
    assert asked.question == (
        "Revoke every grant (3)? 2 running agents lose every file, folder and host you gave."
    )
    assert asked.detail.splitlines()[:3] == [
        "•  codex · aaaa loses 1 file",
        "•  aider · bbbb loses 1 host",
        "•  also 1 grant for later sessions of a profile (no running agent has them now)",
    ]
    assert "stopped" not in asked.detail and not asked.stops
    assert asked.button == "&Revoke everything"
    nobody = confirm_everything([Held(file("later", session=None), ())], name, 8)
    assert nobody.question == "Revoke every grant (1)? No agent is running now."


def test_what_the_undo_bar_says() -> None:
    assert revoked_text(1, [], name) == "Revoked 1 grant"
    assert revoked_text(3, ["aaaa1111", "aaaa1111"], name) == (
        "Revoked 3 grants; codex · aaaa stopped (what it staged is kept for review)"
    )
    assert revoked_text(2, ["aaaa1111", "bbbb2222"], name) == (
        "Revoked 2 grants; codex · aaaa and aider · bbbb stopped (what they staged is kept for "
        "review)"
    )
