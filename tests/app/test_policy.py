"""The decision layer by tables: plain facts in, the answer out; no file system involved."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.consent import Answer, RequestKind, Verdict
from app.grants import Lifetime, Mode
from app.policy import (
    AfterRun,
    Choice,
    CommitReply,
    FileFacts,
    RuleFolders,
    after_run,
    commit_reply,
    commits_unasked,
    file_rule,
    user_answer,
)

SAVE, OPEN = RequestKind.FILE_SAVE, RequestKind.FILE_OPEN
OUT, NOTES = Path("/home/u/Agent-output"), Path("/home/u/Notes")
FOLDERS = RuleFolders(read=(NOTES,), write=(OUT, Path("/srv/drop")))


def allowed(path: Path, mode: Mode) -> Answer:
    return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(path,), mode=mode, by="rule")


@pytest.mark.parametrize(
    ("facts", "answer"),
    [
        (FileFacts(SAVE, OUT / "report.md"), allowed(OUT / "report.md", Mode.READ_WRITE)),
        (FileFacts(SAVE, OUT), allowed(OUT, Mode.READ_WRITE)),
        (
            FileFacts(SAVE, Path("/srv/drop/sub/x")),
            allowed(Path("/srv/drop/sub/x"), Mode.READ_WRITE),
        ),
        (FileFacts(SAVE, None), None),  # not a path a rule acts on
        (FileFacts(SAVE, Path("/home/u/Agent-outputs/x")), None),  # a sibling, longer name
        (FileFacts(SAVE, Path("/home/u/.ssh/authorized_keys")), None),
        (FileFacts(SAVE, NOTES / "x"), None),  # a read folder is not a write folder
        (FileFacts(OPEN, NOTES, is_dir=True, directory=True), allowed(NOTES, Mode.READ)),
        (
            FileFacts(OPEN, NOTES / "sub", is_dir=True, directory=True),
            allowed(NOTES / "sub", Mode.READ),
        ),
        (FileFacts(OPEN, NOTES / "a.md", is_dir=False, directory=True), None),  # not a folder
        (FileFacts(OPEN, NOTES, is_dir=True, directory=False), None),  # files: the user picks
        (FileFacts(OPEN, OUT, is_dir=True, directory=True), None),  # write is not read
        (FileFacts(OPEN, None, directory=True), None),
        (FileFacts(RequestKind.NETWORK, OUT), None),
    ],
)
def test_file_rule(facts: FileFacts, answer: Answer | None) -> None:
    assert file_rule(facts, FOLDERS) == answer


def test_no_folders_answer_nothing() -> None:
    assert file_rule(FileFacts(SAVE, OUT / "x"), RuleFolders()) is None


@pytest.mark.parametrize(
    ("profile", "review", "committed"),
    [
        ("auto", "ask", True),  # the profile said so explicitly
        ("auto", "never", False),  # the user's --review never holds
        ("ask", "ask", False),
        ("ask", "never", False),
        ("", "ask", False),
    ],
)
def test_commits_unasked(profile: str, review: str, committed: bool) -> None:
    assert commits_unasked(profile, review) is committed


@pytest.mark.parametrize(
    ("profile_commit", "review", "interactive", "then"),
    [
        ("auto", "ask", True, AfterRun.COMMIT),
        ("auto", "ask", False, AfterRun.COMMIT),  # no one at a terminal: the profile said so
        ("auto", "never", True, AfterRun.KEEP),  # the user chose to review later
        ("ask", "ask", True, AfterRun.ASK),
        ("ask", "ask", False, AfterRun.KEEP),  # no terminal to ask on
        ("ask", "never", True, AfterRun.KEEP),
        ("", "ask", True, AfterRun.ASK),
    ],
)
def test_after_run(profile_commit: str, review: str, interactive: bool, then: AfterRun) -> None:
    assert after_run(profile_commit, review, interactive) is then


@pytest.mark.parametrize(
    ("text", "risky", "reply"),
    [
        ("y\n", 0, CommitReply.SAFE),
        ("YES", 0, CommitReply.SAFE),
        (" y ", 2, CommitReply.SAFE),
        ("a", 2, CommitReply.ALL),
        ("all\n", 1, CommitReply.ALL),
        ("a", 0, CommitReply.KEEP),  # [a]ll is only offered when something can run code
        ("d\n", 0, CommitReply.DIFF),
        ("D", 3, CommitReply.DIFF),
        ("", 0, CommitReply.KEEP),
        ("\n", 2, CommitReply.KEEP),
        ("n", 0, CommitReply.KEEP),
        ("yep", 0, CommitReply.KEEP),
        ("diff", 0, CommitReply.KEEP),
    ],
)
def test_commit_reply(text: str, risky: int, reply: CommitReply) -> None:
    assert commit_reply(text, risky) is reply


NET = RequestKind.NETWORK
PICKED = (Path("/home/u/a.txt"),)


@pytest.mark.parametrize(
    ("kind", "choice", "answer"),
    [
        (OPEN, Choice(None, paths=PICKED), Answer(Verdict.DENY, by="t")),
        (OPEN, Choice(Lifetime.ONCE), Answer(Verdict.DENY, by="t")),  # nothing picked
        (SAVE, Choice(Lifetime.SESSION), Answer(Verdict.DENY, by="t")),
        (
            OPEN,
            Choice(Lifetime.ONCE, paths=PICKED),
            Answer(Verdict.ALLOW, Lifetime.ONCE, None, PICKED, Mode.READ, by="t"),
        ),
        (
            OPEN,
            Choice(Lifetime.UNTIL, 99.0, PICKED, writable=True),
            Answer(Verdict.ALLOW, Lifetime.UNTIL, 99.0, PICKED, Mode.READ_WRITE, by="t"),
        ),
        (
            SAVE,
            Choice(Lifetime.ALWAYS, paths=PICKED),  # a save is staged: always read-write
            Answer(Verdict.ALLOW, Lifetime.ALWAYS, None, PICKED, Mode.READ_WRITE, by="t"),
        ),
        (
            NET,
            Choice(Lifetime.SESSION, paths=PICKED, writable=True),  # no paths for a host
            Answer(Verdict.ALLOW, Lifetime.SESSION, by="t"),
        ),
        (NET, Choice(None), Answer(Verdict.DENY, by="t")),
    ],
)
def test_user_answer(kind: RequestKind, choice: Choice, answer: Answer) -> None:
    assert user_answer(kind, choice, "t") == answer
