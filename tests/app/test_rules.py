"""Profile rules answer only exact, safe requests; everything else goes to the user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.consent import ConsentRequest, RequestKind, Verdict
from app.grants import Mode
from app.profiles import Approval
from app.rules import decide

HOME = Path("/home/u")
APPROVAL = Approval(read=("~/Notes",), write=("~/Agent-output", "/srv/drop"))


def request(kind: RequestKind, **details: Any) -> ConsentRequest:
    return ConsentRequest("r-1", "s", "p", kind, "t", details)


@pytest.mark.parametrize(
    ("details", "target"),
    [
        ({"current_file": "/home/u/Agent-output/report.md"}, "/home/u/Agent-output/report.md"),
        ({"current_folder": "/home/u/Agent-output", "current_name": "a.csv"},
         "/home/u/Agent-output/a.csv"),
        ({"current_folder": "/srv/drop/sub", "current_name": "x"}, "/srv/drop/sub/x"),
        ({"current_file": "/home/u/Agent-output"}, "/home/u/Agent-output"),
    ],
)
def test_saves_into_a_write_folder_are_allowed(details: dict[str, Any], target: str) -> None:
    answer = decide(request(RequestKind.FILE_SAVE, **details), APPROVAL, HOME)
    assert answer is not None and answer.verdict is Verdict.ALLOW and answer.by == "rule"
    assert answer.paths == (Path(target),) and answer.mode is Mode.READ_WRITE


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"current_file": "/home/u/.ssh/authorized_keys"},
        {"current_file": "/home/u/Agent-output/../.bashrc"},
        {"current_file": "/home/u/Agent-outputs/x"},  # a sibling with a longer name
        {"current_file": "relative/x"},
        {"current_file": "/home/u/Agent-output/\\x1bname"},
        {"current_folder": "/home/u/Agent-output", "current_name": "../x"},
        {"current_folder": "/home/u/Agent-output", "current_name": ".."},
        {"current_folder": "/home/u/Agent-output"},
        {"current_folder": "/home/u/Notes", "current_name": "x"},  # read-only folder
    ],
)
def test_anything_else_is_left_to_the_user(details: dict[str, Any]) -> None:
    assert decide(request(RequestKind.FILE_SAVE, **details), APPROVAL, HOME) is None


def test_a_read_folder_can_be_opened_whole(tmp_path: Path) -> None:
    notes = tmp_path / "Notes"
    (notes / "sub").mkdir(parents=True)
    approval = Approval(read=(str(notes),))
    ask = request(RequestKind.FILE_OPEN, directory=True, current_folder=str(notes / "sub"))
    answer = decide(ask, approval, HOME)
    assert answer is not None and answer.paths == (notes / "sub",) and answer.mode is Mode.READ
    files = request(RequestKind.FILE_OPEN, directory=False, current_folder=str(notes))
    assert decide(files, approval, HOME) is None  # which files is the user's choice
    assert decide(request(RequestKind.NETWORK), approval, HOME) is None
    outside = request(RequestKind.FILE_OPEN, directory=True, current_folder=str(tmp_path))
    assert decide(outside, approval, HOME) is None
