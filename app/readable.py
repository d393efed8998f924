"""A review for people who are not developers: changes as a tree with folders folded into
their paths, and each change in words or as lines with the changed words marked (pure)."""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from app.review import CHANGED_TEXT, MAX_DIFF_BYTES, mode_text, text_of, visible_line
from app.staging import Change, ChangeKind, EntryType
from app.text import printable

CONTEXT = 3  # unchanged lines shown around each change


# the tree


@dataclass(frozen=True, slots=True)
class Leaf:
    """A change a person ticks: a file, a link, or a folder with nothing changed inside."""

    label: str  # its name below the folder row above it
    change: Change


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder row: one row for a chain of folders with nothing else in them."""

    label: str  # "a/b/c": the folders it stands for, below the row above it
    path: Path
    new: tuple[Change, ...]  # the new folders it stands for: they land with what is in them
    children: tuple[Folder | Leaf, ...]


THIS_FOLDER = "(this folder itself)"  # a leaf for a folder's own change beside its contents


@dataclass(slots=True)
class _Node:
    change: Change | None = None
    children: dict[str, _Node] = field(default_factory=dict)


def folded(changes: Sequence[Change], base: Path) -> tuple[Folder | Leaf, ...]:
    """The changes below `base` as a tree: a chain of folders holding one folder each is
    one row ("a/b/c/d" over "file", not a row per folder), a new folder is its row's
    status rather than a row of its own; folders first, then files, each by name."""
    top = _Node()
    for change in changes:
        node = top
        for part in change.path.relative_to(base).parts:
            node = node.children.setdefault(part, _Node())
        node.change = change
    return _sorted(_convert(name, node, base / name) for name, node in top.children.items())


def _convert(name: str, node: _Node, path: Path) -> Folder | Leaf:
    if not node.children:
        assert node.change is not None  # a node without children was made for a change
        return Leaf(name, node.change)
    own = node.change
    new = (
        (own,)
        if own is not None and own.kind is ChangeKind.ADDED and own.type is EntryType.DIRECTORY
        else ()
    )
    kids: list[Folder | Leaf] = []
    if own is not None and not new:
        kids.append(Leaf(THIS_FOLDER, own))  # its mode, say: ticked on its own
    kids.extend(_convert(n, child, path / n) for n, child in node.children.items())
    if len(kids) == 1 and isinstance(kids[0], Folder):
        only = kids[0]
        return Folder(f"{name}/{only.label}", only.path, new + only.new, only.children)
    return Folder(name, path, new, _sorted(kids))


def _sorted(nodes: Iterable[Folder | Leaf]) -> tuple[Folder | Leaf, ...]:
    return tuple(
        sorted(
            nodes,
            key=lambda n: (
                isinstance(n, Leaf),
                n.label != THIS_FOLDER,
                n.label.casefold(),
                n.label,
            ),
        )
    )


# a change, readable


class RowKind(StrEnum):
    SAME = "same"
    REMOVED = "removed"
    ADDED = "added"
    GAP = "gap"  # unchanged lines left out


@dataclass(frozen=True, slots=True)
class Piece:
    text: str
    changed: bool = False  # a word that changed within a changed line


@dataclass(frozen=True, slots=True)
class Row:
    kind: RowKind
    old: int | None  # line numbers, from 1
    new: int | None
    pieces: tuple[Piece, ...] = ()

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)


@dataclass(frozen=True, slots=True)
class Readable:
    summary: str  # what the change is, in words
    rows: tuple[Row, ...] = ()  # its lines, when old and new are text


_WORDS = re.compile(r"\w+|\s+|[^\w\s]")


def words(line: str) -> list[str]:
    return _WORDS.findall(line)


def word_rows(old: Sequence[str], new: Sequence[str], context: int = CONTEXT) -> list[Row]:
    """Lines (without their ends) of the old and new text as rows: unchanged ones only
    near a change, a changed line as its old and new rows with the changed words marked."""
    rows: list[Row] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    shown_to = 0  # old lines up to here are shown or left out with a gap row
    for group in matcher.get_grouped_opcodes(context):
        if group[0][1] > shown_to:
            rows.append(Row(RowKind.GAP, None, None))
        for tag, i1, i2, j1, j2 in group:
            shown_to = i2
            if tag == "equal":
                rows.extend(
                    Row(RowKind.SAME, i + 1, j + 1, (Piece(old[i]),))
                    for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
                )
                continue
            paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
            removed = [Row(RowKind.REMOVED, i + 1, None, (Piece(old[i]),)) for i in range(i1, i2)]
            added = [Row(RowKind.ADDED, None, j + 1, (Piece(new[j]),)) for j in range(j1, j2)]
            for k in range(paired):
                before, after = _word_pieces(old[i1 + k], new[j1 + k])
                removed[k] = Row(RowKind.REMOVED, i1 + k + 1, None, before)
                added[k] = Row(RowKind.ADDED, None, j1 + k + 1, after)
            rows.extend(removed)
            rows.extend(added)
    if rows and shown_to < len(old):
        rows.append(Row(RowKind.GAP, None, None))
    return rows


def _word_pieces(old: str, new: str) -> tuple[tuple[Piece, ...], tuple[Piece, ...]]:
    a, b = words(old), words(new)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if matcher.ratio() < 0.3:  # hardly alike: marking words would mark nearly all of them
        return (Piece(old),), (Piece(new),)
    before: list[Piece] = []
    after: list[Piece] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        same = tag == "equal"
        if i2 > i1:
            before.append(Piece("".join(a[i1:i2]), not same))
        if j2 > j1:
            after.append(Piece("".join(b[j1:j2]), not same))
    return tuple(before), tuple(after)


def readable(change: Change) -> Readable:
    """The change in words, with its lines when both sides are text."""
    if change.type is EntryType.SYMLINK:
        target = printable(change.link_target or "")
        if change.kind is ChangeKind.DELETED:
            return Readable("A shortcut (symbolic link) is deleted.")
        was = _was(change)
        return Readable(f"{was}A shortcut (symbolic link) to {target}.")
    if change.type is EntryType.DIRECTORY:
        return Readable(
            {
                ChangeKind.ADDED: "A new folder.",
                ChangeKind.DELETED: "The folder is deleted, with everything in it.",
                ChangeKind.MODE: "Only who may open or change this folder changes.",
            }.get(change.kind, f"{_was(change)}A folder.")
            + _mode_words(change)
        )
    if change.type is EntryType.SPECIAL:
        return Readable("A special file (not a document, folder or link): it is never committed.")
    if change.kind is ChangeKind.MODE:
        return Readable("The content stays the same." + _mode_words(change))
    old_path = change.renamed_from or change.path
    moved = (
        f"Moved here from {printable(str(change.renamed_from))}. "
        if change.kind is ChangeKind.RENAMED
        else ""
    )
    old = (
        text_of(old_path)
        if change.kind in (ChangeKind.MODIFIED, ChangeKind.DELETED, ChangeKind.RENAMED)
        else ""
    )
    new = text_of(change.staged, change.new_hash) if change.staged is not None else ""
    if new == CHANGED_TEXT:
        return Readable(
            "The agent changed this file again after the list was made: open the review "
            "again to see it (a commit of this list refuses it)."
        )
    was = _was(change)
    if old is None or new is None:
        size = max(change.old_size or 0, change.new_size or 0)
        what = (
            f"Too large to show here ({_size(size)})"
            if size > MAX_DIFF_BYTES
            else "Not text (a picture, an archive, a program or similar)"
        )
        sizes = {
            ChangeKind.ADDED: f"a new file of {_size(change.new_size or 0)}",
            ChangeKind.DELETED: f"the file of {_size(change.old_size or 0)} is deleted",
        }.get(
            change.kind,
            f"{_size(change.old_size or 0)} before, {_size(change.new_size or 0)} after",
        )
        return Readable(f"{moved}{was}{what}: {sizes}." + _mode_words(change))
    old_lines, new_lines = _split(old), _split(new)
    rows = tuple(word_rows(old_lines, new_lines))
    added = sum(r.kind is RowKind.ADDED for r in rows)
    removed = sum(r.kind is RowKind.REMOVED for r in rows)
    if change.kind is ChangeKind.ADDED:
        summary = f"A new file of {_count(len(new_lines), 'line')}."
    elif change.kind is ChangeKind.DELETED:
        summary = f"The file is deleted ({_count(len(old_lines), 'line')})."
    elif not rows:
        summary = "The text stays the same."
    else:
        summary = f"{_count(added, 'line')} added or changed, {_count(removed, 'line')} removed."
    return Readable(moved + was + summary + _mode_words(change), rows)


def _split(text: str) -> list[str]:
    return [visible_line(line).rstrip("\r\n") for line in text.split("\n")][
        : -1 if text.endswith("\n") else None
    ]


def _was(change: Change) -> str:
    """What the path was on the host, when the change makes it something else."""
    if change.kind is not ChangeKind.MODIFIED or change.old_mode is None:
        return ""
    before = stat.S_IFMT(change.old_mode)
    names = {stat.S_IFREG: "file", stat.S_IFDIR: "folder", stat.S_IFLNK: "shortcut"}
    now = {EntryType.FILE: "file", EntryType.DIRECTORY: "folder", EntryType.SYMLINK: "shortcut"}
    old, new = names.get(before, "special file"), now.get(change.type, "special file")
    return f"Was a {old}, becomes a {new}. " if old != new else ""


def _mode_words(change: Change) -> str:
    changed = change.mode_change
    if changed is None:
        return ""
    before, after = changed
    runs = after & 0o111 and not (before or 0) & 0o111
    others = after & 0o002 and not (before or 0) & 0o002
    said = f" Permissions: {mode_text(change).removeprefix('mode ').replace('->', '→')}"
    if runs:
        said += " (it can be run as a program)"
    if others:
        said += " (anyone on this computer may change it)"
    return said + "." if runs or others or before is not None else ""


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} bytes"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def common_base(paths: Sequence[Path]) -> Path | None:
    """The folder the changes are in, shown once above them: the deepest folder holding
    every path (the folder above, for a single path or one that holds the rest)."""
    if not paths:
        return None
    texts = [str(p) for p in paths]
    base = os.path.commonpath(texts)
    if len(texts) == 1 or base in texts:
        base = os.path.dirname(base)
    return Path(base)
