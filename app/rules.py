"""Profile rules: the questions a profile answers by itself, so that scripted agents can save
into a folder the user set aside for them without anyone at the screen.

A pure function of the request and the profile's approval section, tested by tables. Only
exact, safe cases are answered: anything else is left to the user (or denied when no one is
there). A rule never answers with more than the agent named.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.consent import Answer, ConsentRequest, RequestKind, Verdict
from app.grants import Lifetime, Mode
from app.profiles import Approval


def _under(path: Path, roots: tuple[str, ...], home: Path) -> bool:
    for root in roots:
        base = Path(str(home) + root[1:]) if root.startswith("~") else Path(root)
        if path == base or base in path.parents:
            return True
    return False


def _clean(text: object) -> Path | None:
    """An absolute path the agent named, or None if it is not one we would act on."""
    if not isinstance(text, str) or not text.startswith("/") or "\\" in text:
        return None  # `\\` marks a character the portal had to escape: never guess
    path = Path(os.path.normpath(text))
    if str(path) != text.rstrip("/") or ".." in path.parts:
        return None
    return path


def decide(request: ConsentRequest, approval: Approval, home: Path) -> Answer | None:
    """The profile's own answer to `request`, or None to ask the user."""
    details = request.details
    if request.kind is RequestKind.FILE_SAVE and approval.write:
        target = _clean(details.get("current_file"))
        if target is None:
            folder, name = _clean(details.get("current_folder")), details.get("current_name")
            if folder is not None and isinstance(name, str) and name and "/" not in name \
                    and "\\" not in name and name not in (".", ".."):
                target = folder / name
        if target is not None and _under(target, approval.write, home):
            return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(target,),
                          mode=Mode.READ_WRITE, by="rule")
    if request.kind is RequestKind.FILE_OPEN and approval.read and details.get("directory"):
        folder = _clean(details.get("current_folder"))
        if folder is not None and _under(folder, approval.read, home) and folder.is_dir():
            return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(folder,), mode=Mode.READ,
                          by="rule")
    return None
