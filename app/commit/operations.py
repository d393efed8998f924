"""What a commit or an undo is to do, as journal operations: pure functions over the reviewed
changes, and over facts about the host gathered beforehand (`apply.undo_facts`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from app.commit.journal import CommitAction, Operation
from app.staging import Change, ChangeKind, EntryType

NOT_A_FILE = "not-a-file"  # UndoFacts.content of something other than a regular file

CHANGED = "changed since the commit: not undone"
RECREATED = "re-created since the commit: not undone"
NO_BACKUP = "what it replaced can no longer be read from the commit's backup: not undone"


@dataclass(frozen=True, slots=True)
class UndoFacts:
    """What is at an operation's target now, and in its backup."""

    present: bool  # something is at the target (a symlink counts, not followed)
    content: str | None = None  # the target's sha256; NOT_A_FILE; None if nothing is there
    link: str | None = None  # the target's symlink target, if it is a symlink
    empty_directory: bool = False  # the target is an empty directory
    backup_link: str | None = None  # the backup's symlink target, if it is a symlink
    backup_mode: int | None = None  # the backup's permission bits, if it could be read


def ordered(changes: Sequence[Change]) -> list[Change]:
    """New directories first, parents before children; deletions last, deepest first; the
    rest (which may go in any order) as they come."""

    def depth(change: Change) -> tuple[int, str]:
        path = str(change.path)
        return path.count(os.sep), path

    deleted, directories, rest = [], [], []
    for change in changes:
        if change.kind is ChangeKind.DELETED:
            deleted.append(change)
        elif change.type is EntryType.DIRECTORY:
            directories.append(change)
        else:
            rest.append(change)
    deleted.sort(key=lambda change: (-str(change.path).count(os.sep), str(change.path)))
    return [*sorted(directories, key=depth), *rest, *deleted]


def operations_for(change: Change, root: str, move: bool = False) -> list[Operation]:
    """The operations that put one reviewed change in place below the granted `root`."""
    target = str(change.path)
    mode = change.mode  # exactly what the listing showed
    if change.kind is ChangeKind.DELETED:
        action = (
            CommitAction.DELETE_TREE if change.type is EntryType.DIRECTORY else CommitAction.DELETE
        )
        return [Operation(action, target, root, old_hash=change.old_hash)]
    if change.kind is ChangeKind.MODE:
        return [Operation(CommitAction.CHMOD, target, root, mode=mode)]
    fresh = change.kind is ChangeKind.ADDED or change.kind is ChangeKind.RENAMED
    if change.type is EntryType.DIRECTORY:
        op = Operation(CommitAction.MKDIR, target, root, mode=mode)
    elif change.type is EntryType.SYMLINK:
        op = Operation(CommitAction.SYMLINK, target, root, link=change.link_target, fresh=fresh)
    else:
        op = Operation(
            CommitAction.WRITE,
            target,
            root,
            source=str(change.staged),
            mode=mode,
            old_hash=change.old_hash,
            new_hash=change.new_hash,
            fresh=fresh,
            move=move,
        )
    if change.kind is ChangeKind.RENAMED and change.renamed_from is not None:
        return [
            op,
            Operation(
                CommitAction.DELETE, str(change.renamed_from), root, old_hash=change.old_hash
            ),
        ]
    return [op]


def reverse(op: Operation, now: UndoFacts) -> tuple[Operation | None, str | None]:
    """The operation that undoes `op`, or why it cannot be undone now; (None, None) when
    there is nothing to undo."""
    action, target, root = op.action, op.target, op.root
    if action is CommitAction.WRITE:
        if now.content != op.new_hash:
            return None, CHANGED
        if op.backup is None:
            return Operation(CommitAction.DELETE, target, root, old_hash=op.new_hash), None
        return _from_backup(op, now)
    if action is CommitAction.SYMLINK:
        if now.link is None or now.link != op.link:
            return None, CHANGED
        if op.backup is None:
            return Operation(CommitAction.DELETE, target, root), None
        if now.backup_link is None:
            return None, NO_BACKUP
        return Operation(CommitAction.SYMLINK, target, root, link=now.backup_link), None
    if action is CommitAction.DELETE:
        if now.present:
            return None, RECREATED
        if op.backup is None:
            return None, None
        if now.backup_link is not None:
            return Operation(CommitAction.SYMLINK, target, root, link=now.backup_link), None
        return _from_backup(op, now)
    if action is CommitAction.DELETE_TREE:
        if now.present:
            return None, RECREATED
        return Operation(CommitAction.RESTORE_TREE, target, root, source=op.backup), None
    if action is CommitAction.MKDIR and op.created and now.empty_directory:
        return Operation(CommitAction.DELETE_TREE, target, root), None
    return None, None


def _from_backup(op: Operation, now: UndoFacts) -> tuple[Operation | None, str | None]:
    """Writing the commit's backup of `op.target` back in place, as it was before."""
    if now.backup_mode is None:
        return None, NO_BACKUP
    return Operation(
        CommitAction.WRITE,
        op.target,
        op.root,
        source=op.backup,
        mode=now.backup_mode,
        new_hash=op.old_hash,
    ), None
