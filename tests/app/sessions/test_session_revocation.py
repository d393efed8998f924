"""The revocation plan, by table: what leaves which session's view, which sessions stop, and
what is announced, for each kind of grant a session can hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.events import EventKind
from app.grants import Grant, Lifetime, Mode
from app.sessions.revocation import (
    NOT_RESTORED_FILE,
    NOT_RESTORED_TREE,
    TREE_STOPPED,
    Announce,
    Reach,
    Reshow,
    ShowAt,
    Shown,
    Step,
    StopAgent,
    Unshow,
    Withdraw,
    plan_restore,
    plan_revocation,
)

DOCS = Path("/run/airlock/doc")


def grant(path: str, gid: str = "g1", session: str | None = "s1", mode: Mode = Mode.READ) -> Grant:
    return Grant(gid, Path(path), mode, Lifetime.SESSION, session, None, 0.0)


NOTES = grant("/home/u/notes")
NOTE = grant("/home/u/notes/a.md")
HOME = grant("/home/u", gid="g2")
OTHER = grant("/home/u/music", gid="g3")

CASES: list[tuple[str, Grant, list[Reach], bool, list[Step]]] = [
    (
        "a grant no session ever had is announced once, on its own",
        NOTES,
        [],
        False,
        [Announce("s1", "/home/u/notes", {"grant": "g1"})],
    ),
    ("a grant only ended sessions had is not announced again", NOTES, [], True, []),
    (
        "a read-write folder staged as an overlay stops the agent",
        grant("/home/u/work", mode=Mode.READ_WRITE),
        [Reach("s1", staged_tree=True)],
        True,
        [
            Withdraw("s1", "g1"),
            StopAgent("s1"),
            Unshow("s1", Path("/home/u/work"), (DOCS,)),
            Announce(
                "s1", "/home/u/work", {"grant": "g1", "stopped": True, "reason": TREE_STOPPED}
            ),
        ],
    ),
    (
        "a file placed in the documents area leaves from there",
        NOTE,
        [Reach("s1", location="/run/airlock/doc/ab12/a.md")],
        True,
        [
            Withdraw("s1", "g1"),
            Unshow("s1", Path("/run/airlock/doc/ab12/a.md"), (DOCS,)),
            Announce(
                "s1",
                "/home/u/notes/a.md",
                {"grant": "g1", "location": "/run/airlock/doc/ab12/a.md"},
            ),
        ],
    ),
    (
        "a folder at its own path leaves, keeping its own mount point",
        NOTES,
        [Reach("s1", is_dir=True)],
        True,
        [
            Withdraw("s1", "g1"),
            Unshow("s1", Path("/home/u/notes"), (Path("/home/u/notes"), DOCS)),
            Announce("s1", "/home/u/notes", {"grant": "g1"}),
        ],
    ),
    (
        "a file at its own path keeps its folder's mount point",
        NOTE,
        [Reach("s1", is_dir=False)],
        True,
        [
            Withdraw("s1", "g1"),
            Unshow("s1", Path("/home/u/notes/a.md"), (Path("/home/u/notes"), DOCS)),
            Announce("s1", "/home/u/notes/a.md", {"grant": "g1"}),
        ],
    ),
    (
        "what another live grant covers is shown again",
        NOTE,
        [Reach("s1", others=(Shown(HOME, True), Shown(OTHER, True)))],
        True,
        [
            Withdraw("s1", "g1"),
            Unshow("s1", Path("/home/u/notes/a.md"), (Path("/home/u"), DOCS)),
            Reshow("s1", Path("/home/u")),
            Announce("s1", "/home/u/notes/a.md", {"grant": "g1"}),
        ],
    ),
    (
        "a narrower live grant inside the revoked folder is shown again",
        NOTES,
        [Reach("s1", is_dir=True, others=(Shown(NOTE, False),))],
        True,
        [
            Withdraw("s1", "g1"),
            Unshow("s1", Path("/home/u/notes"), (Path("/home/u/notes"), DOCS)),
            Reshow("s1", Path("/home/u/notes/a.md")),
            Announce("s1", "/home/u/notes", {"grant": "g1"}),
        ],
    ),
    (
        "each live session gets its own steps, in order",
        NOTES,
        [Reach("s1", staged_tree=True), Reach("s2", location="/run/airlock/doc/x/notes")],
        True,
        [
            Withdraw("s1", "g1"),
            StopAgent("s1"),
            Unshow("s1", Path("/home/u/notes"), (DOCS,)),
            Announce(
                "s1", "/home/u/notes", {"grant": "g1", "stopped": True, "reason": TREE_STOPPED}
            ),
            Withdraw("s2", "g1"),
            Unshow("s2", Path("/run/airlock/doc/x/notes"), (DOCS,)),
            Announce(
                "s2", "/home/u/notes", {"grant": "g1", "location": "/run/airlock/doc/x/notes"}
            ),
        ],
    ),
]


@pytest.mark.parametrize(
    ("grant_", "reaches", "linked", "steps"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_revocation_plan(
    grant_: Grant, reaches: list[Reach], linked: bool, steps: list[Step]
) -> None:
    assert plan_revocation(grant_, reaches, linked) == steps


def test_only_a_staged_folder_stops_a_session() -> None:
    for _, grant_, reaches, linked, _steps in CASES:
        stopped = {
            s.session for s in plan_revocation(grant_, reaches, linked) if isinstance(s, StopAgent)
        }
        assert stopped == {r.session for r in reaches if r.staged_tree}


ADDED = EventKind.GRANT_ADDED  # an undo announces what it gave back, or not

RESTORE_CASES: list[tuple[str, Grant, list[Reach], list[Step]]] = [
    (
        "a read-only grant comes back at its own path",
        NOTES,
        [Reach("s1", is_dir=True)],
        [
            Reshow("s1", Path("/home/u/notes")),
            Announce("s1", "/home/u/notes", {"grant": "g1", "restored": True}, ADDED),
        ],
    ),
    (
        "a read-only file placed mid-run comes back where it was placed",
        NOTE,
        [Reach("s1", location="/run/airlock/doc/ab12/a.md")],
        [
            ShowAt("s1", Path("/home/u/notes/a.md"), Path("/run/airlock/doc/ab12/a.md")),
            Announce("s1", "/home/u/notes/a.md", {"grant": "g1", "restored": True}, ADDED),
        ],
    ),
    (
        "a stopped session's read-write folder is not given back to it, and says so",
        grant("/home/u/work", mode=Mode.READ_WRITE),
        [Reach("s1", staged_tree=True)],
        [
            Announce(
                "s1",
                "/home/u/work",
                {"grant": "g1", "restored": False, "reason": NOT_RESTORED_TREE},
                ADDED,
            )
        ],
    ),
    (
        "a read-write file's withdrawn copy stays with the review",
        grant("/home/u/a.txt", mode=Mode.READ_WRITE),
        [Reach("s1", location="/run/airlock/saves/cd34/a.txt")],
        [
            Announce(
                "s1",
                "/home/u/a.txt",
                {"grant": "g1", "restored": False, "reason": NOT_RESTORED_FILE},
                ADDED,
            )
        ],
    ),
    (
        "a grant no live session had is announced as back once",
        NOTES,
        [],
        [Announce("s1", "/home/u/notes", {"grant": "g1", "restored": True}, ADDED)],
    ),
]


@pytest.mark.parametrize(
    ("grant_", "reaches", "steps"),
    [c[1:] for c in RESTORE_CASES],
    ids=[c[0] for c in RESTORE_CASES],
)
def test_restore_plan(grant_: Grant, reaches: list[Reach], steps: list[Step]) -> None:
    assert plan_restore(grant_, reaches) == steps
