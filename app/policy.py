"""Decisions, in one place: pure functions over plain facts that the edges gather (paths
resolved on the file system, the user's choices in a front end). Nothing here touches
the file system, a socket or the clock, so each decision is tested by a table
(tests/app/test_policy.py); the edges gather facts (app/rules.py for the profile's file
rules) and the front ends only present the answers.

The proxy's decisions live beside it, pure in the same way: where the agent may connect
(`app.egress.policy.decide_destination`) and when an upload waits for the user
(`app.egress.uploads.UploadGate`); so do a commit's and an undo's plans
(`app.commit.operations`) and a revocation's (`app.sessions.revocation.plan_revocation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.consent import Answer, RequestKind, Verdict
from app.grants import Lifetime, Mode

# Files: the questions a profile's [approval] section answers by itself.


@dataclass(frozen=True, slots=True)
class FileFacts:
    """A file request as the edge found it: `target` is where the file to save, or the
    folder to open, really is (every symlink resolved), or None when it is not something a
    rule may act on (a path the agent wrote oddly, a missing folder, a name that is a
    symlink already); `is_dir`: the target is an existing folder."""

    kind: RequestKind
    target: Path | None
    is_dir: bool = False
    directory: bool = False  # an open request asked for a folder, not files


@dataclass(frozen=True, slots=True)
class RuleFolders:
    """The [approval] section's folders, where they really are."""

    read: tuple[Path, ...] = ()
    write: tuple[Path, ...] = ()


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def file_rule(facts: FileFacts, folders: RuleFolders) -> Answer | None:
    """The profile's own answer to a file request, or None to ask the user. Only exact, safe
    cases are answered, with no more than the agent named: a save into a write folder, a
    folder opened inside a read folder."""
    target = facts.target
    if target is None:
        return None
    if facts.kind is RequestKind.FILE_SAVE and _inside(target, folders.write):
        return Answer(
            Verdict.ALLOW, Lifetime.ONCE, paths=(target,), mode=Mode.READ_WRITE, by="rule"
        )
    if (
        facts.kind is RequestKind.FILE_OPEN
        and facts.directory
        and facts.is_dir
        and _inside(target, folders.read)
    ):
        return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(target,), mode=Mode.READ, by="rule")
    return None


# Commits: what happens to staged changes when a session ends.


def commits_unasked(profile_commit: str, review: str) -> bool:
    """Whether a session's staged changes are committed when it ends, with no one asked:
    only when its profile says so explicitly (`approval.commit = "auto"`), and never when
    the user chose to review later (`--review never`). Otherwise they are put to the user,
    or kept staged for `airlock changes`."""
    return profile_commit == "auto" and review != "never"


class AfterRun(StrEnum):
    """What happens to a session's staged changes when it ends."""

    COMMIT = "commit"  # committed unasked (what can run code excepted)
    ASK = "ask"  # put to the person at the terminal
    KEEP = "keep"  # left staged for `airlock changes`


def after_run(profile_commit: str, review: str, interactive: bool) -> AfterRun:
    """`commits_unasked`, else asked when the user wants to be asked and can be (a
    terminal to ask on), else kept."""
    if commits_unasked(profile_commit, review):
        return AfterRun.COMMIT
    return AfterRun.ASK if review == "ask" and interactive else AfterRun.KEEP


class CommitReply(StrEnum):
    """What a reply to "commit these?" means."""

    SAFE = "safe"  # everything but what can run code (everything, when nothing can)
    ALL = "all"  # what can run code too: the person named it
    DIFF = "diff"  # show the differences, then ask again
    KEEP = "keep"  # nothing is committed


def commit_reply(text: str, risky: int) -> CommitReply:
    """The meaning of a typed reply: [y]es, [a]ll (only offered when `risky` changes can run
    code), [d]iff; anything else, an empty line included, keeps the changes staged."""
    reply = text.strip().lower()
    if reply == "d":
        return CommitReply.DIFF
    if reply in ("y", "yes"):
        return CommitReply.SAFE
    if risky and reply in ("a", "all"):
        return CommitReply.ALL
    return CommitReply.KEEP


# Questions: the answer a person's choices in a front end make.


@dataclass(frozen=True, slots=True)
class Choice:
    """What a person chose for a request: for how long (None: they said no), what they
    picked for a file request, and whether they let the agent change what it opens."""

    lifetime: Lifetime | None
    until: float | None = None
    paths: tuple[Path, ...] = ()
    writable: bool = False


def user_answer(kind: RequestKind, choice: Choice, by: str) -> Answer:
    """The answer a person's choice makes, the same from every front end: no lifetime, or a
    file request with nothing picked, is a denial; a save is read-write (what the agent
    writes is staged), an open is read-write only when the person said so; other requests
    carry no paths."""
    if choice.lifetime is None:
        return Answer(Verdict.DENY, by=by)
    if kind is RequestKind.FILE_SAVE or kind is RequestKind.FILE_OPEN:
        if not choice.paths:
            return Answer(Verdict.DENY, by=by)
        writes = kind is RequestKind.FILE_SAVE or choice.writable
        return Answer(
            Verdict.ALLOW,
            choice.lifetime,
            choice.until,
            choice.paths,
            Mode.READ_WRITE if writes else Mode.READ,
            by=by,
        )
    return Answer(Verdict.ALLOW, choice.lifetime, choice.until, by=by)
