"""Whether a request's path is one a host rule's `paths` allow: a pure match.

`"/v1/messages"` allows that path exactly; `"/repos/*"` allows `/repos/` and anything
below it. The path is compared as sent (without its query), and anything an upstream
could read as another path is refused rather than normalised: dot segments (also
percent-encoded), encoded slashes and backslashes. An allow-list only loses by that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import unquote

_AMBIGUOUS = re.compile(r"%2f|%5c|\\", re.IGNORECASE)


def path_only(target: str) -> str:
    """The path of an origin-form target, without its query."""
    return target.partition("?")[0] or "/"


def path_fits(allowed: Sequence[str], target: str) -> bool:
    """Whether `target` (origin-form, query allowed) is among `allowed`; empty allows all."""
    if not allowed:
        return True
    path = path_only(target)
    if not path.startswith("/") or _AMBIGUOUS.search(path):
        return False
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return False
    for pattern in allowed:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False
