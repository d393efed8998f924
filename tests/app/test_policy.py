"""The decision layer by tables: plain facts in, the answer out; no file system involved."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.consent import Answer, RequestKind, Verdict
from app.grants import Lifetime, Mode
from app.policy import FileFacts, RuleFolders, commits_unasked, file_rule

SAVE, OPEN = RequestKind.FILE_SAVE, RequestKind.FILE_OPEN
OUT, NOTES = Path("/home/u/Agent-output"), Path("/home/u/Notes")
FOLDERS = RuleFolders(read=(NOTES,), write=(OUT, Path("/srv/drop")))


def allowed(path: Path, mode: Mode) -> Answer:
    return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(path,), mode=mode, by="rule")


@pytest.mark.parametrize(("facts", "answer"), [
    (FileFacts(SAVE, OUT / "report.md"), allowed(OUT / "report.md", Mode.READ_WRITE)),
    (FileFacts(SAVE, OUT), allowed(OUT, Mode.READ_WRITE)),
    (FileFacts(SAVE, Path("/srv/drop/sub/x")), allowed(Path("/srv/drop/sub/x"), Mode.READ_WRITE)),
    (FileFacts(SAVE, None), None),  # not a path a rule acts on
    (FileFacts(SAVE, Path("/home/u/Agent-outputs/x")), None),  # a sibling, longer name
    (FileFacts(SAVE, Path("/home/u/.ssh/authorized_keys")), None),
    (FileFacts(SAVE, NOTES / "x"), None),  # a read folder is not a write folder
    (FileFacts(OPEN, NOTES, is_dir=True, directory=True), allowed(NOTES, Mode.READ)),
    (FileFacts(OPEN, NOTES / "sub", is_dir=True, directory=True),
     allowed(NOTES / "sub", Mode.READ)),
    (FileFacts(OPEN, NOTES / "a.md", is_dir=False, directory=True), None),  # not a folder
    (FileFacts(OPEN, NOTES, is_dir=True, directory=False), None),  # files: the user picks
    (FileFacts(OPEN, OUT, is_dir=True, directory=True), None),  # write is not read
    (FileFacts(OPEN, None, directory=True), None),
    (FileFacts(RequestKind.NETWORK, OUT), None),
])
def test_file_rule(facts: FileFacts, answer: Answer | None) -> None:
    assert file_rule(facts, FOLDERS) == answer


def test_no_folders_answer_nothing() -> None:
    assert file_rule(FileFacts(SAVE, OUT / "x"), RuleFolders()) is None


@pytest.mark.parametrize(("profile", "review", "committed"), [
    ("auto", "ask", True),  # the profile said so explicitly
    ("auto", "never", False),  # the user's --review never holds
    ("ask", "ask", False),
    ("ask", "never", False),
    ("", "ask", False),
])
def test_commits_unasked(profile: str, review: str, committed: bool) -> None:
    assert commits_unasked(profile, review) is committed
