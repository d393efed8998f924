"""`CommitLog`: commits and undoes reviewed changes, journaled, and recovers interrupted ones.

Once the session has ended (its container is gone, and with it every process that could
still write a staged file), a staged file on the same mount as its target is moved into
place rather than copied: it needs no temp file, as it is complete and nobody writes it; the
one syncfs makes it durable where it is, and applying renames it over its target. Until then
it has not moved, so a rollback has nothing to undo for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app import fs
from app.commit import apply
from app.commit.journal import (
    CommitAction,
    CommitError,
    CommitRecord,
    CommitResult,
    Journal,
    State,
    new_id,
    operations_json,
    rollback_json,
)
from app.commit.operations import operations_for, ordered, reverse
from app.fs import DirectoryHandles
from app.staging import Change, StagedRoot

log = logging.getLogger(__name__)

# Fault injection for the crash tests: seconds to pause after each applied operation.
PAUSE_VARIABLE = "AIRLOCK_COMMIT_PAUSE"


class CommitLog:
    """`STATE/commits/ID/{commit.json, backup/}`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.journal = Journal(root)

    # history

    def records(self) -> list[CommitRecord]:
        return self.journal.records()

    def record(self, commit_id: str) -> CommitRecord:
        return self.journal.record(commit_id)

    # commit

    def commit(
        self,
        session: str,
        changes: Sequence[Change],
        roots: dict[str, StagedRoot],
        move: bool = False,
    ) -> CommitResult:
        """`move`: the session has ended, nothing can write its staged files any more; they
        are moved into place where the file system allows, instead of copied."""
        with self.journal.lock(wait=True):
            self._recover()
            return self._commit(session, changes, roots, move)

    def _commit(
        self, session: str, changes: Sequence[Change], roots: dict[str, StagedRoot], move: bool
    ) -> CommitResult:
        refused: list[tuple[str, str]] = [
            (str(c.path), "; ".join(c.problems)) for c in changes if c.problems
        ]
        accepted = [c for c in changes if not c.problems]
        record = CommitRecord(new_id(), session, time.time(), State.PREPARING, refused=refused)
        host_roots = {root_id: str(root.host_root) for root_id, root in roots.items()}
        for change in ordered(accepted):
            record.operations.extend(operations_for(change, host_roots[change.root], move))
        return self._run(record)

    def undo(self, commit_id: str) -> CommitResult:
        with self.journal.lock(wait=True):
            self._recover()
            return self._undo(commit_id)

    def _undo(self, commit_id: str) -> CommitResult:
        original = self.record(commit_id)
        if original.state is not State.DONE:
            raise CommitError(f"commit {commit_id} is {original.state}: nothing to undo")
        if original.undone_by:
            raise CommitError(f"commit {commit_id} was already undone by {original.undone_by}")
        record = CommitRecord(
            new_id(), original.session, time.time(), State.PREPARING, undo_of=commit_id
        )
        leaving: set[str] = set()  # what the undo removes, deepest first
        for op in reversed(original.operations):
            undoing, why = reverse(op, apply.undo_facts(op, leaving))
            if why:
                record.refused.append((op.target, why))
            elif undoing is not None:
                record.operations.append(undoing)
                if undoing.action in (CommitAction.DELETE, CommitAction.DELETE_TREE):
                    leaving.add(undoing.target)
        result = self._run(record)
        if result.commit is not None and result.applied:
            original.undone_by = record.id
            self.journal.save(original)
        return result

    def _run(self, record: CommitRecord) -> CommitResult:
        directory = self.root / record.id
        backup = self.journal.begin(record)
        apply.reserve_names(record)
        self.journal.save(record, json.dumps(rollback_json(record.operations)))
        with apply.EarlyWriteback({fs.split(op.root)[0] for op in record.operations}):
            failures = apply.prepare_all(record.operations, str(backup))
        refused = list(record.refused)
        prepared = []
        for index, op in enumerate(record.operations):
            if index in failures:
                refused.append((op.target, failures[index]))
            else:
                prepared.append(op)
        record.operations = prepared
        record.refused = refused
        target_directories = {fs.split(op.target)[0] for op in prepared}
        # One syncfs per file system instead of an fsync per file: the same guarantee (every
        # temp file is on disk before the journal says "applying"), a fraction of the cost.
        # It waits for the disk without the GIL: meanwhile the journal text is made.
        with ThreadPoolExecutor(1, thread_name_prefix="airlock-sync") as syncing:
            synced = syncing.submit(fs.sync_file_systems, target_directories | {str(directory)})
            operations_text = json.dumps(operations_json(record.operations))
            synced.result()
        record.state = State.APPLYING
        self.journal.save(record, operations_text)
        conflicts = apply.apply_all(
            record.operations, float(os.environ.get(PAUSE_VARIABLE, "0") or 0)
        )
        apply.sync_directories(target_directories)
        record.state = State.DONE
        if conflicts:
            record.operations = [op for op in record.operations if id(op) not in conflicts]
            refused.extend((op.target, why) for op, why in conflicts.values())
            operations_text = json.dumps(operations_json(record.operations))
        self.journal.save(record, operations_text)
        self.journal.finish(record)
        applied = tuple(
            op.target
            for op in record.operations
            if op.action is not CommitAction.MKDIR or op.created
        )
        return CommitResult(record, applied, tuple(refused))

    # recovery

    def recover(self) -> list[str]:
        """Finishes or rolls back commits a crash interrupted; returns their ids. Nothing to
        do while a commit is under way (its process is alive: it was not interrupted)."""
        with self.journal.lock(wait=False) as held:
            return self._recover() if held else []

    def _recover(self) -> list[str]:
        resolved = []
        for marker, record in self.journal.unfinished():
            if record.state is State.PREPARING:
                with DirectoryHandles() as parents:
                    # Backwards: a new directory's contents go before the directory.
                    for op in reversed(record.operations):
                        apply.roll_back(op, parents)
                record.state = State.ROLLED_BACK
            elif record.state is State.APPLYING:
                with DirectoryHandles() as parents:
                    for op in record.operations:
                        if why := apply.apply_one(op, parents):
                            log.warning("not applying %s to %s: %s", op.action, op.target, why)
                apply.sync_directories({os.path.dirname(op.target) for op in record.operations})
                record.state = State.DONE
            else:
                marker.unlink()  # done, but killed before the marker went
                continue
            self.journal.save(record)
            marker.unlink()
            resolved.append(record.id)
            log.warning("commit %s was interrupted; it is now %s", record.id, record.state)
        return resolved
