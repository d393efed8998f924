"""Decisions, in one place: pure functions over plain facts that the edges gather (paths
resolved on the file system, the user's choices on the command line). Nothing here touches
the file system, a socket or the clock, so each decision is tested by a table
(tests/app/test_policy.py); the edges gather facts (app/rules.py for the profile's file
rules) and the front ends only present the answers.

Network and upload decisions are app/egress/policy.py's, over the same kind of facts.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(target,), mode=Mode.READ_WRITE,
                      by="rule")
    if (facts.kind is RequestKind.FILE_OPEN and facts.directory and facts.is_dir
            and _inside(target, folders.read)):
        return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(target,), mode=Mode.READ, by="rule")
    return None


# Commits: what happens to staged changes when a session ends.


def commits_unasked(profile_commit: str, review: str) -> bool:
    """Whether a session's staged changes are committed when it ends, with no one asked:
    only when its profile says so explicitly (`approval.commit = "auto"`), and never when
    the user chose to review later (`--review never`). Otherwise they are put to the user,
    or kept staged for `airlock changes`."""
    return profile_commit == "auto" and review != "never"
