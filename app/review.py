"""Review of staged changes: list and diff them, commit or discard them, undo commits.

Works on what is on disk, so it serves a running session and one that ended long ago, from
any process.
"""

from __future__ import annotations

import difflib
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from app.commit import CommitLog, CommitRecord, CommitResult
from app.errors import SessionError
from app.events import EventBus, EventKind
from app.paths import Dirs
from app.staging import (
    MAX_CHANGES,
    Change,
    ChangeKind,
    Changeset,
    EntryType,
    SessionStaging,
    open_regular,
)
from app.text import UNSAFE, escaped

MAX_DIFF_BYTES = 1024 * 1024


class Review:
    def __init__(self, dirs: Dirs, bus: EventBus) -> None:
        self.dirs = dirs
        self.bus = bus
        self.log = CommitLog(dirs.state / "commits")

    def staging(self, session: str) -> SessionStaging:
        if not session or "/" in session or session.startswith("."):
            raise SessionError(f"{session!r} is not a session id")
        root = self.dirs.sessions / session / "staging"
        if not root.is_dir():
            raise SessionError(f"session {session!r} has no staged changes "
                               "(see `airlock sessions --all`)")
        return SessionStaging(root, session)

    def changes(self, session: str) -> Changeset:
        self.log.recover()
        return self.staging(session).changeset()

    def commit(self, session: str, paths: Sequence[Path] = (),
               reviewed: Mapping[Path, str] | None = None) -> CommitResult:
        """Commits the staged changes at `paths` (all if none). `reviewed`: the fingerprint
        of each change as the user reviewed it; a change that is no longer what they saw
        (the agent still runs, and wrote again) is refused, not committed unseen."""
        staging = self.staging(session)
        changeset = staging.changeset()
        if changeset.truncated:
            raise SessionError(
                f"session {session} staged more than {MAX_CHANGES} changes; that is not "
                f"reviewable: discard them (`airlock discard {session}`) or commit a "
                "smaller part from the desktop app's review window")
        selected = changeset.select(paths)
        if paths and not selected:
            raise SessionError(f"none of {', '.join(map(str, paths))} is a staged change "
                               f"of {session} (see `airlock changes {session}`)")
        if reviewed is not None:
            selected = [_as_reviewed(change, reviewed.get(change.path)) for change in selected]
        roots = {root.id: root for root in staging.roots()}
        result = self.log.commit(session, selected, roots, move=staging.sealed)
        applied = set(result.applied)
        _rebase(staging, applied)
        for path, reason in result.refused:
            kind = EventKind.CHANGE_CONFLICT if reason.startswith("conflict") else \
                EventKind.CHANGE_REFUSED
            self.bus.emit(kind, session, path, reason=reason)
        if result.commit is not None and result.applied:
            self.bus.emit(EventKind.CHANGES_COMMITTED, session, session,
                          commit=result.commit.id, paths=sorted(applied))
        if staging.sealed and len(applied) == len(changeset.changes):
            self._forget(staging)  # all of it committed: nothing left to review
        return result

    @staticmethod
    def _forget(staging: SessionStaging) -> None:
        """Empties an ended session's staging area, which holds nothing to review any more:
        copies equal to what is now on the host, what the agent left in the saves area
        outside any save. It stays, sealed, so the session still lists as having no
        changes; so does what the kernel left in an overlay's work directory (root's, in a
        directory of mode 0), which the user cannot remove."""
        staging.remove_all()
        staging.root.mkdir(mode=0o700, exist_ok=True)
        (staging.root / staging.SEALED).touch()  # nothing left in it to sync

    def discard(self, session: str, paths: Sequence[Path] = ()) -> list[Change]:
        staging = self.staging(session)
        changeset = staging.changeset()
        selected = changeset.select(paths)
        everything = not paths or (len(selected) == len(changeset.changes)
                                   and not changeset.truncated)
        if staging.sealed and everything:
            self._forget(staging)  # all of it, once the session has ended
        else:
            staging.discard(selected)
        if selected:
            self.bus.emit(EventKind.CHANGES_DISCARDED, session, session,
                          paths=[str(c.path) for c in selected])
        return selected

    def history(self) -> list[CommitRecord]:
        self.log.recover()
        return self.log.records()

    def undo(self, commit_id: str) -> CommitResult:
        result = self.log.undo(commit_id)
        original = self.log.record(commit_id)
        for path, reason in result.refused:
            self.bus.emit(EventKind.CHANGE_REFUSED, original.session, path, reason=reason)
        if result.applied and result.commit is not None:
            self.bus.emit(EventKind.COMMIT_UNDONE, original.session, commit_id,
                          commit=result.commit.id, paths=list(result.applied))
            staging_root = self.dirs.sessions / original.session / "staging"
            if staging_root.is_dir():
                _rebase(SessionStaging(staging_root, original.session), result.applied)
        return result


def _as_reviewed(change: Change, fingerprint: str | None) -> Change:
    if fingerprint is None:
        return replace(change, problems=(*change.problems, "not reviewed: it was staged after "
                                         "the review was opened; review it again"))
    if fingerprint != change.fingerprint:
        return replace(change, problems=(*change.problems, "changed since it was reviewed: "
                                         "not committed; review it again"))
    return change


def _rebase(staging: SessionStaging, applied: Iterable[str]) -> None:
    """What a commit or undo wrote is the new base of each staged root it touched."""
    paths = [Path(p) for p in applied]
    for root in staging.roots():
        staging.rebase(root, [p for p in paths
                              if p == root.host_root or root.host_root in p.parents])


def diff(change: Change) -> Iterator[str]:
    """A unified diff for text, one line of summary for anything else."""
    if change.type is EntryType.SYMLINK:
        yield f"symlink {change.path} -> {change.link_target}\n"
        return
    if change.type is not EntryType.FILE:
        yield f"{change.kind} {change.type} {change.path}\n"
        return
    if change.kind is ChangeKind.MODE:
        yield (f"mode {change.path}: {stat.S_IMODE(change.old_mode or 0):04o} -> "
               f"{stat.S_IMODE(change.new_mode or 0):04o}\n")
        return
    old_path = change.renamed_from or change.path
    old = _text(old_path) if change.kind in (ChangeKind.MODIFIED, ChangeKind.DELETED,
                                             ChangeKind.RENAMED) else ""
    new = _text(change.staged) if change.staged is not None else ""
    if old is None or new is None:
        yield (f"binary {change.path}: {change.old_size or 0} -> {change.new_size or 0} bytes, "
               f"sha256 {(change.old_hash or '-')[:12]} -> {(change.new_hash or '-')[:12]}\n")
        return
    before = f"a{old_path}" if change.kind is not ChangeKind.ADDED else "/dev/null"
    after = f"b{change.path}" if change.kind is not ChangeKind.DELETED else "/dev/null"
    for line in difflib.unified_diff(_lines(old), _lines(new), before, after):
        yield _visible(line)


def _lines(text: str) -> list[str]:
    """Lines as a terminal ends them, at "\n" only (`splitlines` also breaks at "\r", form
    feeds and more, which would hide them from `_visible`)."""
    *whole, last = text.split("\n")
    return [line + "\n" for line in whole] + ([last] if last else [])


def _visible(line: str) -> str:
    """What the agent wrote, shown, not obeyed: a terminal escape in a staged file could move
    the cursor over the line it is on, or clear it, and a bidi override reorders what is
    shown; a carriage return overwrites the start of the line. Tabs and the line's own end
    stay."""
    end = next((e for e in ("\r\n", "\n") if line.endswith(e)), "")
    body = line[:len(line) - len(end)]
    return UNSAFE.sub(lambda m: m.group() if m.group() == "\t" else escaped(m.group()),
                      body) + end


def _text(path: Path | None) -> str | None:
    if path is None:
        return ""
    try:
        fd = open_regular(path)  # not through a symlink, nor stuck on a FIFO swapped in
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    with open(fd, "rb") as f:
        data = f.read(MAX_DIFF_BYTES + 1)
    if len(data) > MAX_DIFF_BYTES or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
