"""Profile rules answer only exact, safe requests; everything else goes to the user. Paths
are judged where they really are, so the tables run against a real temporary home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.consent import ConsentRequest, RequestKind, Verdict
from app.grants import Mode
from app.profiles import Approval
from app.rules import decide


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for folder in (
        "Agent-output",
        "Agent-outputs",
        "Notes/sub",
        ".ssh",
        "srv/drop/sub",
        "elsewhere",
    ):
        (tmp_path / folder).mkdir(parents=True)
    return tmp_path


def approval(home: Path) -> Approval:
    return Approval(read=("~/Notes",), write=("~/Agent-output", f"{home}/srv/drop"))


def request(kind: RequestKind, **details: Any) -> ConsentRequest:
    return ConsentRequest("r-1", "s", "p", kind, "t", details)


def filled(details: dict[str, Any], home: Path) -> dict[str, Any]:
    return {
        k: v.replace("{home}", str(home)) if isinstance(v, str) else v for k, v in details.items()
    }


@pytest.mark.parametrize(
    ("details", "target"),
    [
        ({"current_file": "{home}/Agent-output/report.md"}, "Agent-output/report.md"),
        ({"current_folder": "{home}/Agent-output", "current_name": "a.csv"}, "Agent-output/a.csv"),
        ({"current_folder": "{home}/srv/drop/sub", "current_name": "x"}, "srv/drop/sub/x"),
        ({"current_file": "{home}/Agent-output"}, "Agent-output"),
    ],
)
def test_saves_into_a_write_folder_are_allowed(
    details: dict[str, Any], target: str, home: Path
) -> None:
    answer = decide(request(RequestKind.FILE_SAVE, **filled(details, home)), approval(home), home)
    assert answer is not None and answer.verdict is Verdict.ALLOW and answer.by == "rule"
    assert answer.paths == (home / target,) and answer.mode is Mode.READ_WRITE


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"current_file": "{home}/.ssh/authorized_keys"},
        {"current_file": "{home}/Agent-output/../.bashrc"},
        {"current_file": "{home}/Agent-outputs/x"},  # a sibling with a longer name
        {"current_file": "relative/x"},
        {"current_file": "{home}/Agent-output/\\x1bname"},
        {"current_folder": "{home}/Agent-output", "current_name": "../x"},
        {"current_folder": "{home}/Agent-output", "current_name": ".."},
        {"current_folder": "{home}/Agent-output"},
        {"current_folder": "{home}/Notes", "current_name": "x"},  # read-only folder
        {"current_folder": "{home}/Agent-output/missing", "current_name": "x"},
        {"current_folder": "{home}/Agent-output/out", "current_name": "x"},  # -> ~/.ssh
        {"current_file": "{home}/Agent-output/keys"},  # a symlink to ~/.ssh/authorized_keys
    ],
)
def test_anything_else_is_left_to_the_user(details: dict[str, Any], home: Path) -> None:
    (home / "Agent-output" / "out").symlink_to(home / ".ssh")
    (home / "Agent-output" / "keys").symlink_to(home / ".ssh" / "authorized_keys")
    ask = request(RequestKind.FILE_SAVE, **filled(details, home))
    assert decide(ask, approval(home), home) is None


def test_a_read_folder_can_be_opened_whole(home: Path) -> None:
    notes = home / "Notes"
    rules = approval(home)
    ask = request(RequestKind.FILE_OPEN, directory=True, current_folder=str(notes / "sub"))
    answer = decide(ask, rules, home)
    assert answer is not None and answer.paths == (notes / "sub",) and answer.mode is Mode.READ
    files = request(RequestKind.FILE_OPEN, directory=False, current_folder=str(notes))
    assert decide(files, rules, home) is None  # which files is the user's choice
    assert decide(request(RequestKind.NETWORK), rules, home) is None
    outside = request(RequestKind.FILE_OPEN, directory=True, current_folder=str(home))
    assert decide(outside, rules, home) is None


def test_a_symlink_in_a_rule_folder_does_not_carry_the_answer_out_of_it(home: Path) -> None:
    # The agent lists a granted tree, finds a link the user made, and names it.
    (home / "Notes" / "ext").symlink_to(home / "elsewhere")
    ask = request(RequestKind.FILE_OPEN, directory=True, current_folder=str(home / "Notes/ext"))
    assert decide(ask, approval(home), home) is None


def test_a_rule_folder_that_is_itself_a_link_is_judged_where_it_points(home: Path) -> None:
    (home / "Drop").symlink_to(home / "srv" / "drop")
    rules = Approval(write=("~/Drop",))
    ask = request(RequestKind.FILE_SAVE, current_folder=str(home / "Drop"), current_name="a.txt")
    answer = decide(ask, rules, home)
    assert answer is not None and answer.paths == (home / "srv" / "drop" / "a.txt",)
