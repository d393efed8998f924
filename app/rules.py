"""Profile rules: the questions a profile answers by itself, so that scripted agents can save
into a folder the user set aside for them without anyone at the screen.

This is the edge of the decision: it looks at the file system (paths are judged where they
really are, symlinks resolved) and hands plain facts to `app.policy.file_rule`, which decides.
Only exact, safe cases are answered: anything else is left to the user (or denied when no one
is there). A rule never answers with more than the agent named.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.consent import Answer, ConsentRequest, RequestKind
from app.policy import FileFacts, RuleFolders, file_rule
from app.profiles import Approval


def _folders(roots: tuple[str, ...], home: Path) -> tuple[Path, ...]:
    """The rule's folders, resolved: a symlink in a rule's folder must not carry the answer
    to wherever it points."""
    return tuple(
        (Path(str(home) + root[1:]) if root.startswith("~") else Path(root)).resolve()
        for root in roots
    )


def _real(path: Path) -> Path | None:
    """`path` with every symlink in it resolved, or None if it does not exist."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, a loop
        return None


def _real_target(path: Path) -> Path | None:
    """Where a file to save will really be: its folder resolved; None if that folder does
    not exist or the name is a symlink already (the user is asked instead)."""
    folder = _real(path.parent)
    if folder is None or (folder / path.name).is_symlink():
        return None
    return folder / path.name


def _clean(text: object) -> Path | None:
    """An absolute path the agent named, or None if it is not one we would act on."""
    if not isinstance(text, str) or not text.startswith("/") or "\\" in text:
        return None  # `\\` marks a character the portal had to escape: never guess
    path = Path(os.path.normpath(text))
    if str(path) != text.rstrip("/") or ".." in path.parts:
        return None
    return path


def file_facts(request: ConsentRequest) -> FileFacts | None:
    """What the file system says about a file request; None for other requests."""
    details = request.details
    if request.kind is RequestKind.FILE_SAVE:
        target = _clean(details.get("current_file"))
        if target is None:
            folder, name = _clean(details.get("current_folder")), details.get("current_name")
            if (
                folder is not None
                and isinstance(name, str)
                and name
                and "/" not in name
                and "\\" not in name
                and name not in (".", "..")
            ):
                target = folder / name
        return FileFacts(request.kind, _real_target(target) if target is not None else None)
    if request.kind is RequestKind.FILE_OPEN:
        folder = _clean(details.get("current_folder"))
        real = _real(folder) if folder is not None else None
        return FileFacts(
            request.kind,
            real,
            is_dir=real is not None and real.is_dir(),
            directory=bool(details.get("directory")),
        )
    return None


def decide(request: ConsentRequest, approval: Approval, home: Path) -> Answer | None:
    """The profile's own answer to `request`, or None to ask the user."""
    if not (approval.read or approval.write):
        return None  # nothing to look at on disk
    facts = file_facts(request)
    if facts is None:
        return None
    return file_rule(
        facts, RuleFolders(_folders(approval.read, home), _folders(approval.write, home))
    )
