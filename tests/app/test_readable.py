"""The readable review (pure): folders folded into their paths, changed words marked, and
what cannot be shown as lines said in words."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.readable import (
    THIS_FOLDER,
    Folder,
    Leaf,
    RowKind,
    folded,
    readable,
    word_rows,
)
from app.staging import Change, ChangeKind, EntryType

BASE = Path("/home/ana/project")


def change(
    path: str, kind: ChangeKind = ChangeKind.ADDED, type_: EntryType = EntryType.FILE
) -> Change:
    return Change(BASE / path, kind, type_, "r1", new_mode=0o100644)


def shape(nodes: tuple[Folder | Leaf, ...]) -> list[object]:
    return [
        [n.label + "/", [c.path.name for c in n.new], shape(n.children)]
        if isinstance(n, Folder)
        else n.label
        for n in nodes
    ]


NEW_DIR = (ChangeKind.ADDED, EntryType.DIRECTORY)


@pytest.mark.parametrize(
    ("changes", "tree"),
    [
        # One new file four new folders deep: one folder row, not a row per folder.
        (
            [
                change("a", *NEW_DIR),
                change("a/b", *NEW_DIR),
                change("a/b/c", *NEW_DIR),
                change("a/b/c/d", *NEW_DIR),
                change("a/b/c/d/file.txt"),
            ],
            [["a/b/c/d/", ["a", "b", "c", "d"], ["file.txt"]]],
        ),
        # Existing folders fold the same way, and stop folding where they branch.
        (
            [change("src/app/x.py"), change("src/app/y.py"), change("src/z.py"), change("README")],
            [["src/", [], [["app/", [], ["x.py", "y.py"]], "z.py"]], "README"],
        ),
        # A folder's own change that is not "new" (its mode) is a row to tick on its own.
        (
            [change("bin", ChangeKind.MODE, EntryType.DIRECTORY), change("bin/tool")],
            [["bin/", [], [THIS_FOLDER, "tool"]]],
        ),
        # An empty new folder is a change like a file.
        ([change("empty", *NEW_DIR)], ["empty"]),
    ],
)
def test_folders_fold_into_their_paths(changes: list[Change], tree: list[object]) -> None:
    assert shape(folded(changes, BASE)) == tree


@pytest.mark.parametrize(
    ("old", "new", "rows"),
    [
        (
            ["the quick brown fox"],
            ["the slow brown fox"],
            [("removed", "the [quick] brown fox"), ("added", "the [slow] brown fox")],
        ),
        # Lines hardly alike: the whole line is the change, no words marked.
        (
            ["alpha beta"],
            ["1234 5678 zzz"],
            [("removed", "alpha beta"), ("added", "1234 5678 zzz")],
        ),
        (["a", "b"], ["a", "b", "c"], [("same", "a"), ("same", "b"), ("added", "c")]),
        # Far from the change, unchanged lines are left out as one gap.
        (
            [str(i) for i in range(10)],
            [str(i) for i in range(9)] + ["nine"],
            [("gap", "")]
            + [("same", str(i)) for i in range(6, 9)]
            + [("removed", "9"), ("added", "nine")],
        ),
    ],
)
def test_changed_words_are_marked(
    old: list[str], new: list[str], rows: list[tuple[str, str]]
) -> None:
    found = [
        (str(r.kind), "".join(f"[{p.text}]" if p.changed else p.text for p in r.pieces))
        for r in word_rows(old, new)
    ]
    assert found == rows


def test_what_is_not_lines_is_said_in_words(tmp_path: Path) -> None:
    staged = tmp_path / "photo.png"
    staged.write_bytes(b"\x89PNG\0" * 10)
    host = tmp_path / "doc"
    host.write_text("text\n")
    picture = Change(
        tmp_path / "photo.png",
        ChangeKind.ADDED,
        EntryType.FILE,
        "r",
        staged,
        new_size=60,
        new_mode=0o100644,
    )
    assert readable(picture).summary == (
        "Not text (a picture, an archive, a program or similar): a new file of 60 bytes."
    )
    assert readable(picture).rows == ()
    link = Change(
        host,
        ChangeKind.MODIFIED,
        EntryType.SYMLINK,
        "r",
        staged,
        old_mode=stat.S_IFREG | 0o644,
        link_target="/etc/passwd",
    )
    assert readable(link).summary == (
        "Was a file, becomes a shortcut. A shortcut (symbolic link) to /etc/passwd."
    )
    script = Change(
        host,
        ChangeKind.MODE,
        EntryType.FILE,
        "r",
        host,
        old_mode=stat.S_IFREG | 0o644,
        new_mode=stat.S_IFREG | 0o755,
    )
    assert readable(script).summary == (
        "The content stays the same. Permissions: 0644 → 0755 (it can be run as a program)."
    )
    edited = tmp_path / "staged-doc"
    edited.write_text("text\nmore\n")
    modified = Change(
        host,
        ChangeKind.MODIFIED,
        EntryType.FILE,
        "r",
        edited,
        old_mode=stat.S_IFREG | 0o644,
        new_mode=stat.S_IFREG | 0o644,
    )
    shown = readable(modified)
    assert shown.summary == "1 line added or changed, 0 lines removed."
    assert [(r.kind, r.text) for r in shown.rows] == [
        (RowKind.SAME, "text"),
        (RowKind.ADDED, "more"),
    ]
