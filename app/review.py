"""Review of staged changes: list and diff them, commit or discard them, undo commits.

Works on what is on disk, so it serves a running session and one that ended long ago, from
any process. Each listing shown to the person is recorded (`SESSION_DIR/listings/ID.json`,
out of the agent's reach) so that a commit is held to what they saw, not to what the agent
staged since.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.commit import CommitAction, CommitLog, CommitRecord, CommitResult
from app.errors import SessionError
from app.events import EventBus, EventKind
from app.fs import open_regular, sha256_file
from app.paths import Dirs
from app.risky import Check, path_reasons, reasons_for
from app.staging import (
    Change,
    ChangeKind,
    Changeset,
    EntryType,
    Returned,
    SessionStaging,
)
from app.text import UNSAFE, escaped, lookalikes, printable

log = logging.getLogger(__name__)

MAX_DIFF_BYTES = 1024 * 1024
KEPT_LISTINGS = 8  # per session: a listing a little older than the last can still be committed

CHANGED_SINCE_REVIEW = "changed since you reviewed it"
RUNS_CODE = "can run code on your machine"
NOT_REVIEWED = "not in the listing you reviewed"


@dataclass(frozen=True, slots=True)
class Listing:
    """What one listing of a session's changes showed: each path's fingerprint. Its id is
    the changeset's digest, the one the listing printed."""

    id: str
    session: str
    created_at: float
    fingerprints: Mapping[Path, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "created_at": self.created_at,
            "changes": sorted([str(p), f] for p, f in self.fingerprints.items()),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Listing:
        return cls(
            str(data["id"]),
            str(data["session"]),
            float(data["created_at"]),
            {Path(p): str(f) for p, f in data["changes"]},
        )


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
            raise SessionError(
                f"session {session!r} has no staged changes (see `airlock sessions --all`)"
            )
        return SessionStaging(root, session)

    def changes(self, session: str) -> Changeset:
        self.log.recover()
        return self.staging(session).changeset()

    # listings: what the person was shown, so that a commit can be held to it

    def _listings(self, session: str) -> Path:
        # Beside the staging area, not in it: the agent reaches parts of that (its saves).
        return self.dirs.sessions / session / "listings"

    def listing(self, session: str) -> tuple[Changeset, Listing]:
        """The changes, as a listing the person is about to be shown: it is recorded, and a
        later `commit_listed` commits what it showed and nothing else."""
        changeset = self.changes(session)
        return changeset, self.record(changeset)

    def record(self, changeset: Changeset) -> Listing:
        listing = Listing(
            changeset.digest,
            changeset.session,
            time.time(),
            {c.path: c.fingerprint for c in changeset.changes},
        )
        directory = self._listings(changeset.session)
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"{listing.id}.json"
        temp = directory / f".{listing.id}-{secrets.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            json.dump(listing.to_json(), f)
        os.replace(temp, path)  # a reader sees the old listing or the new one, whole
        for stale in sorted(directory.glob("*.json"), key=_modified)[:-KEPT_LISTINGS]:
            stale.unlink(missing_ok=True)
        return listing

    def listed(self, session: str, listing_id: str | None = None) -> Listing | None:
        """The listing with this id (SessionError if there is none), or the last one (None
        if the session's changes were never listed)."""
        directory = self._listings(session)
        if listing_id is not None:
            if not listing_id or not all(c in "0123456789abcdef" for c in listing_id):
                raise SessionError(
                    f"{printable(listing_id)!r} is not a changeset id (12 hex "
                    f"digits, as `airlock changes {session}` prints it)"
                )
            path = directory / f"{listing_id}.json"
            if not path.is_file():
                raise SessionError(
                    f"no listing of {session}'s changes has the id {listing_id}; "
                    f"list them again with `airlock changes {session}`"
                )
            return _read_listing(path)
        found = sorted(directory.glob("*.json"), key=_modified) if directory.is_dir() else []
        for path in reversed(found):
            listing = _read_listing(path)
            if listing is not None:
                return listing
        return None

    def commit_listed(
        self,
        session: str,
        paths: Sequence[Path] = (),
        listing_id: str | None = None,
        include_risky: bool = False,
    ) -> CommitResult:
        """A commit held to what the person was shown: the listing with `listing_id`, or
        else the last listing. A change that is not what it showed is refused as changed
        since they reviewed it. A running session's changes are never committed unlisted;
        an ended session's, which nothing can change any more, may be. A change that can run
        code is committed only if named in `paths`, or with `include_risky`."""
        staging = self.staging(session)
        listing = self.listed(session, listing_id)
        if listing is None:
            if not staging.sealed:
                raise SessionError(
                    f"session {session} is still running, and its changes were never listed: "
                    f"review them with `airlock changes {session} --diff` first, then commit"
                )
            return self.commit(session, paths, None, include_risky)
        result = self.commit(session, paths, listing.fingerprints, include_risky)
        # A listed change that is neither committed now nor on the host already is one the
        # person expects and will not get (the agent undid it): said, not passed over.
        wanted = [Path(os.path.abspath(p)) for p in paths]
        handled = {*result.applied, *(p for p, _ in result.refused)}
        gone = [
            (
                str(path),
                f"listed in {listing.id} but no longer staged as shown: nothing committed for it",
            )
            for path, fingerprint in sorted(listing.fingerprints.items())
            if str(path) not in handled
            and not _landed(path, fingerprint)
            and (not wanted or any(path == w or w in path.parents for w in wanted))
        ]
        for path_text, reason in gone:
            self.bus.emit(EventKind.CHANGE_REFUSED, session, path_text, reason=reason)
        return replace(result, refused=(*result.refused, *gone)) if gone else result

    def commit(
        self,
        session: str,
        paths: Sequence[Path] = (),
        reviewed: Mapping[Path, str] | None = None,
        include_risky: bool = True,
        exact: bool = False,
    ) -> CommitResult:
        """Commits the staged changes at `paths` (all if none). `reviewed`: the fingerprint
        of each change as the user reviewed it; a change that is no longer what they saw
        (the agent still runs, and wrote again) is refused, not committed unseen.
        `include_risky=False`: a change that can run code on the host (`runs_code`) is
        committed only if `paths` names it, not as part of a folder or of "everything".
        `exact`: a folder in `paths` is its own change, not what is in it (the review
        window names each ticked change)."""
        staging = self.staging(session)
        changeset = staging.changeset()
        if changeset.truncated:
            raise SessionError(
                f"session {session} staged more than {changeset.limit} changes; that is not "
                f"reviewable: discard them (`airlock discard {session}`) or commit a "
                "smaller part from the desktop app's review window"
            )
        selected = changeset.select(paths, exact)
        if paths and not selected:
            raise SessionError(
                f"none of {', '.join(map(str, paths))} is a staged change "
                f"of {session} (see `airlock changes {session}`)"
            )
        if reviewed is not None:
            selected = [_as_reviewed(change, reviewed.get(change.path)) for change in selected]
        if not include_risky:
            named = {Path(os.path.abspath(p)) for p in paths}
            risky = runs_code(Changeset(session, tuple(selected)))
            selected = [
                _held(change, session, risky[change.path])
                if change.path in risky
                and change.path not in named
                and change.renamed_from not in named
                else change
                for change in selected
            ]
        roots = {root.id: root for root in staging.roots()}
        result = self.log.commit(session, selected, roots, move=staging.sealed)
        applied = set(result.applied)
        _rebase(staging, applied)
        for path, reason in result.refused:
            kind = (
                EventKind.CHANGE_CONFLICT
                if reason.startswith("conflict")
                else EventKind.CHANGE_REFUSED
            )
            self.bus.emit(kind, session, path, reason=reason)
        if result.commit is not None and result.applied:
            self.bus.emit(
                EventKind.CHANGES_COMMITTED,
                session,
                session,
                commit=result.commit.id,
                paths=sorted(applied),
            )
        if staging.sealed and len(applied) == len(changeset.changes):
            self._forget(staging)  # all of it committed: nothing left to review
        return result

    @staticmethod
    def _forget(staging: SessionStaging) -> None:
        """Empties an ended session's staging area, which holds nothing to review any more:
        copies equal to what is now on the host, what the agent left in the saves area
        outside any save. It stays, sealed, so the session still lists as having no
        changes; so does what the kernel left in an overlay's work directory (root's, in a
        directory of mode 0), which the user cannot remove. The records of its staged roots
        stay too: an undo of one of its commits stages what it takes back there again."""
        kept = {
            root.id: {name: (staging.root / root.id / name).read_bytes() for name in _RECORDS}
            for root in staging.roots()
            if all((staging.root / root.id / name).is_file() for name in _RECORDS)
        }
        staging.remove_all()
        staging.root.mkdir(mode=0o700, exist_ok=True)
        for root_id, records in kept.items():
            (staging.root / root_id).mkdir(mode=0o700, exist_ok=True)
            for name, data in records.items():
                (staging.root / root_id / name).write_bytes(data)
        (staging.root / staging.SEALED).touch()  # nothing left in it to sync

    def discard(self, session: str, paths: Sequence[Path] = ()) -> list[Change]:
        staging = self.staging(session)
        changeset = staging.changeset()
        selected = changeset.select(paths)
        everything = not paths or (
            len(selected) == len(changeset.changes) and not changeset.truncated
        )
        if staging.sealed and everything:
            self._forget(staging)  # all of it, once the session has ended
        else:
            staging.discard(selected)
        if selected:
            self.bus.emit(
                EventKind.CHANGES_DISCARDED, session, session, paths=[str(c.path) for c in selected]
            )
        return selected

    def history(self) -> list[CommitRecord]:
        self.log.recover()
        return self.log.records()

    def undo(self, commit_id: str) -> CommitResult:
        """Puts back what a commit replaced, and returns what it committed to the review:
        the session's staged changes show it again (its `returned`), to be committed again,
        or discarded. A path changed on the host since the commit is not undone (the
        person's newer work is kept), so it is not returned either."""
        result = self.log.undo(commit_id)
        original = self.log.record(commit_id)
        for path, reason in result.refused:
            self.bus.emit(EventKind.CHANGE_REFUSED, original.session, path, reason=reason)
        if not result.applied or result.commit is None:
            return result
        staging_root = self.dirs.sessions / original.session / "staging"
        returned: tuple[str, ...] = ()
        if staging_root.is_dir():
            staging = SessionStaging(staging_root, original.session)
            _rebase(staging, result.applied)
            if staging.sealed:
                # A running session's upper layer still holds what was copied from it; an
                # ended one's was moved into place (or emptied once all of it landed).
                for kept, why in staging.restage(_returned(original, result.commit)):
                    log.warning("%s is undone, but not back for review: %s", kept, why)
            returned = _back_for_review(staging.changeset(), result.applied)
        self.bus.emit(
            EventKind.COMMIT_UNDONE,
            original.session,
            commit_id,
            commit=result.commit.id,
            paths=list(result.applied),
            returned=list(returned),
        )
        return replace(result, returned=returned)


_RECORDS = ("root.json", "base.jsonl")  # what describes a staged root, beside its files


def _returned(original: CommitRecord, undo: CommitRecord) -> list[Returned]:
    """What each operation of `original` that `undo` took back had put on the host, as a
    change to stage again; in the commit's order (new folders before what is in them)."""
    kept = {op.target: op.backup for op in undo.operations}
    found = []
    for op in original.operations:
        if op.target not in kept:
            continue  # not undone (changed since), or nothing to undo
        path = Path(op.target)
        if op.action is CommitAction.WRITE:
            backup = kept[op.target]
            found.append(
                Returned(path, EntryType.FILE, Path(backup) if backup else None, mode=op.mode)
            )
        elif op.action is CommitAction.SYMLINK:
            found.append(Returned(path, EntryType.SYMLINK, link=op.link))
        elif op.action is CommitAction.MKDIR:
            found.append(Returned(path, EntryType.DIRECTORY, mode=op.mode))
        elif op.action in (CommitAction.DELETE, CommitAction.DELETE_TREE):
            found.append(Returned(path, None))
    return found


def _back_for_review(changeset: Changeset, undone: Iterable[str]) -> tuple[str, ...]:
    paths = set(undone)
    return tuple(
        sorted(
            str(c.path)
            for c in changeset.changes
            if str(c.path) in paths or (c.renamed_from is not None and str(c.renamed_from) in paths)
        )
    )


def _landed(path: Path, fingerprint: str) -> bool:
    """Whether the host already has `path` as a change with this fingerprint would leave it
    (committed earlier): then there is nothing to miss."""
    try:
        kind, entry_type, new_hash, _mode, link_target, _renamed = json.loads(fingerprint)
        if kind == ChangeKind.DELETED:
            return not os.path.lexists(path)
        if entry_type == EntryType.SYMLINK:
            return os.path.islink(path) and os.readlink(path) == link_target
        if entry_type == EntryType.DIRECTORY:
            return path.is_dir() and not path.is_symlink()
        return new_hash is not None and sha256_file(path) == new_hash
    except (OSError, ValueError, TypeError):
        return False


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_listing(path: Path) -> Listing | None:
    try:
        return Listing.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable listing %s: %s", path, e)
        return None


def _as_reviewed(change: Change, fingerprint: str | None) -> Change:
    if fingerprint is None:
        return replace(
            change,
            problems=(
                *change.problems,
                f"{NOT_REVIEWED} (staged after it): not committed; review it again",
            ),
        )
    if fingerprint != change.fingerprint:
        return replace(
            change,
            problems=(*change.problems, f"{CHANGED_SINCE_REVIEW}: not committed; review it again"),
        )
    return change


def _held(change: Change, session: str, reasons: list[str]) -> Change:
    return replace(
        change,
        problems=(
            *change.problems,
            (
                f"{RUNS_CODE} ({'; '.join(reasons)}): not committed with the rest; name it "
                f"(`airlock commit {session} PATH`) or add --include-risky"
            ),
        ),
    )


def runs_code(changeset: Changeset) -> dict[Path, list[str]]:
    """For each change that can run code on the host later (app.risky), why. Reads the
    staged files judged by their content: a file that is not what the change lists (the
    agent wrote again) counts as running code."""
    found: dict[Path, list[str]] = {}
    for change in changeset.changes:
        if change.kind is ChangeKind.DELETED:
            continue
        texts: dict[Check, tuple[str | None, str | None]] = {}
        for code in path_reasons(change.path):
            if code.check is Check.PATH or code.check in texts:
                continue
            new = (
                _text(change.staged, change.new_hash)
                if change.type is EntryType.FILE and change.new_hash
                else None
            )
            old = (
                "" if change.kind is ChangeKind.ADDED else _text(change.renamed_from or change.path)
            )
            texts[code.check] = (None if new is _CHANGED else new, None if old is _CHANGED else old)
        reasons = reasons_for(change.path, change.mode_change, change.type is EntryType.FILE, texts)
        if reasons:
            found[change.path] = reasons
    return found


def unreviewed(reason: str) -> bool:
    """Whether a commit refused a path for not being what the person reviewed."""
    return any(
        why in reason
        for why in (CHANGED_SINCE_REVIEW, NOT_REVIEWED, "changed since it was reviewed")
    )  # app.commit's


def mode_text(change: Change) -> str:
    """The permission bits a change gives its path, when they are news: every new file and
    directory, and every path whose bits change (`0644 -> 0755`)."""
    changed = change.mode_change
    if changed is None:
        return ""
    before, after = changed
    return f"mode {after:04o}" if before is None else f"mode {before:04o} -> {after:04o}"


def name_warnings(changeset: Changeset) -> dict[Path, list[str]]:
    """For each changed path whose name is deceptive, or looks like another name in its
    folder (staged, or one the host already has there), what to warn about."""
    changed = {str(c.path): c.path for c in changeset.changes}
    names = set(changed)
    for folder in {
        c.path.parent for c in changeset.changes if c.kind in (ChangeKind.ADDED, ChangeKind.RENAMED)
    }:
        try:
            names.update(os.path.join(folder, n) for n in os.listdir(folder))
        except OSError:
            continue  # a new folder: nothing of the host's to look like
    return {
        changed[path]: found for path, found in lookalikes(sorted(names)).items() if path in changed
    }


def _rebase(staging: SessionStaging, applied: Iterable[str]) -> None:
    """What a commit or undo wrote is the new base of each staged root it touched."""
    paths = [Path(p) for p in applied]
    for root in staging.roots():
        staging.rebase(
            root, [p for p in paths if p == root.host_root or root.host_root in p.parents]
        )


def diff(change: Change) -> Iterator[str]:
    """A unified diff for text, one line of summary for anything else."""
    if change.type is EntryType.SYMLINK:
        yield f"symlink {printable(str(change.path))} -> {printable(change.link_target or '')}\n"
        return
    if change.type is not EntryType.FILE:
        mode = mode_text(change)
        yield (
            f"{change.kind} {change.type} {mode + ' ' if mode else ''}"
            f"{printable(str(change.path))}\n"
        )
        return
    name = printable(str(change.path))
    if mode := mode_text(change):
        yield f"{mode} {name}\n"
    if change.kind is ChangeKind.MODE:
        return
    old_path = change.renamed_from or change.path
    old = (
        _text(old_path)
        if change.kind in (ChangeKind.MODIFIED, ChangeKind.DELETED, ChangeKind.RENAMED)
        else ""
    )
    new = _text(change.staged, change.new_hash) if change.staged is not None else ""
    if new is _CHANGED:
        yield (
            f"changed since it was listed: {name}; list it again to see it (a commit of "
            "this listing refuses it)\n"
        )
        return
    if old is None or new is None:
        yield (
            f"binary {name}: {change.old_size or 0} -> {change.new_size or 0} bytes, "
            f"sha256 {(change.old_hash or '-')[:12]} -> {(change.new_hash or '-')[:12]}\n"
        )
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
    body = line[: len(line) - len(end)]
    return UNSAFE.sub(lambda m: m.group() if m.group() == "\t" else escaped(m.group()), body) + end


_CHANGED = "\0changed"  # what `_text` returns for a file that is not the listed one any more


def _text(path: Path | None, expected: str | None = None) -> str | None:
    """A file's text; None if it is not text. `expected`: the sha256 the listing gave it;
    if what is read has another (the agent wrote again), `_CHANGED`: a diff must show what
    was listed, not something a commit of the listing would refuse."""
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
    if (
        expected is not None
        and len(data) <= MAX_DIFF_BYTES
        and hashlib.sha256(data).hexdigest() != expected
    ):
        return _CHANGED
    if len(data) > MAX_DIFF_BYTES or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# For the readable view of a change (app.readable): the same reading of a file as the diff's.
text_of = _text
visible_line = _visible
CHANGED_TEXT = _CHANGED
