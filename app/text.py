"""Text an agent chose, made safe to show: one policy for every place Airlock displays it.

An agent picks file names, titles, reasons, host names and output. Shown as they are, some
characters act instead of being seen: C0/C1 controls start terminal escapes, bidi controls
reorder a line (`evil<RLO>txt.sh` reads as `evil.sh.txt`), zero-width and other format
characters hide inside a name, line and paragraph separators start a new visual line, and
blanks other than the space (no-break, ideographic, Hangul fillers, braille blank) pass for
one. All of these are shown as visible `\\uXXXX` escapes wherever Airlock shows agent text:
the terminal, the dialogs, the review window, `audit show`, the portal's arguments.

Names that look like other names (two normal forms of `é`, a trailing space or dot, Latin
mixed with Cyrillic or Greek in one name) are not escaped (they are printable) but flagged
in the review: `name_warnings` and `lookalikes`.

Ranges are written out rather than derived from `unicodedata` at import: scanning the code
space costs about 0.3 s, which every `airlock` start would pay. They are the categories Cc,
Cf, Cs, Zl and Zp, the blanks of Zs other than U+0020, and the invisible letters used for
spoofing (Hangul fillers, the combining grapheme joiner, Mongolian variation selectors, the
braille blank), as of Unicode 14 (Python 3.11); `tests/app/test_text.py` checks the table
against the running Python's `unicodedata`.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Iterable

_RANGES = (
    "\x00-\x1f\x7f-\x9f\u00a0\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891"
    "\u08e2\u115f-\u1160\u1680\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u2064"
    "\u2066-\u206f\u2800\u3000\u3164\ud800-\udfff\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
)
UNSAFE = re.compile(f"[{_RANGES}]")
"""Characters never shown as themselves: they act (controls, bidi), hide (format
characters, zero-width) or pass for a space or a line break."""

# Scripts whose letters pass for Latin ones (Cyrillic а, Greek ο, Armenian օ, Cherokee Ꭺ):
# a name mixing two of them is flagged. Other mixes (Latin with CJK, Hangul, Arabic…) are
# how real names look and are not.
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE"})


def escaped(char: str) -> str:
    """An UNSAFE character as a visible escape."""
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """Untrusted text on one line: UNSAFE characters become visible escapes, a newline a
    space."""
    return UNSAFE.sub(lambda m: " " if m.group() == "\n" else escaped(m.group()), text)


def inert(text: object) -> str:
    """Untrusted text with every UNSAFE character escaped, newlines included: for a terminal
    line that must stay one line."""
    return UNSAFE.sub(lambda m: escaped(m.group()), str(text))


def block(text: str) -> str:
    """Untrusted text of several lines (a preview, a diff): newlines and tabs stay, every
    other UNSAFE character is escaped. Lines break at "\\n" only."""
    return UNSAFE.sub(lambda m: m.group() if m.group() in "\n\t" else escaped(m.group()), text)


def quoted(text: str, indent: str = "    ", width: int = 78) -> str:
    """Agent-supplied text for a prompt: escaped, wrapped and every line indented, so that
    nothing it says can start a line of its own and pass for Airlock's voice (a title padded
    with spaces would otherwise wrap onto a fresh line of the terminal)."""
    one_line = re.sub(r"\s+", " ", printable(text)).strip()
    lines = textwrap.wrap(
        one_line, width=max(20, width - len(indent)), break_long_words=True, break_on_hyphens=False
    ) or [""]
    return "\n".join(indent + line for line in lines)


def bad_name(name: str) -> str | None:
    """Why `name` cannot be a file name Airlock creates or gives out, or None."""
    if name in ("", ".", "..") or "/" in name:
        return f"the name {inert(name)!r} is not a plain file name"
    if UNSAFE.search(name):
        return f"the name {inert(name)!r} contains control characters (or other invisible ones)"
    return None


def scripts(text: str) -> frozenset[str]:
    """The confusable scripts whose letters appear in `text`."""
    found = set()
    for char in text:
        if not char.isalpha():
            continue
        word = unicodedata.name(char, "").split(" ", 1)[0]
        if word in _CONFUSABLE_SCRIPTS:
            found.add(word)
    return frozenset(found)


def name_warnings(name: str) -> list[str]:
    """What makes one file name look like something it is not; empty when nothing does."""
    warnings = []
    if UNSAFE.search(name):
        warnings.append("has invisible or control characters (shown as \\u escapes)")
    if unicodedata.normalize("NFC", name) != name:
        warnings.append("is not in its composed form (NFC): it looks like another name")
    elif unicodedata.normalize("NFKC", name) != name:
        warnings.append(
            "has compatibility characters (it looks like "
            f"{printable(unicodedata.normalize('NFKC', name))!r})"
        )
    if name != name.rstrip(" ."):
        warnings.append("ends with a space or a dot")
    if name != name.lstrip(" "):
        warnings.append("starts with a space")
    # Judged per word: `файл.txt` is a Cyrillic name with a Latin extension, `pаypal` (a
    # Cyrillic а) one word of two scripts.
    for word in re.findall(r"[^\W\d_]+", name):
        mixed = scripts(word)
        if len(mixed) > 1:
            warnings.append(
                f"mixes {' and '.join(sorted(s.title() for s in mixed))} letters "
                f"in {printable(word)!r}"
            )
            break
    return warnings


def skeleton(name: str) -> str:
    """What a name looks like on screen, roughly: equal skeletons are lookalikes."""
    visible = UNSAFE.sub("", unicodedata.normalize("NFKC", name))
    return visible.strip(" .").casefold()


def lookalikes(paths: Iterable[str]) -> dict[str, list[str]]:
    """For each path whose last component is deceptive, or looks like another path's in the
    same folder, what to warn about. Paths without a warning are left out."""
    paths = list(paths)
    warnings: dict[str, list[str]] = {}
    seen: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        folder, _, name = path.rpartition("/")
        own = name_warnings(name)
        if own:
            warnings.setdefault(path, []).extend(own)
        seen.setdefault((folder, skeleton(name)), []).append(path)
    for group in seen.values():
        if len(group) < 2:
            continue
        for path in group:
            others = ", ".join(
                printable(other.rpartition("/")[2]) for other in group if other != path
            )
            warnings.setdefault(path, []).append(f"looks like {others} in the same folder")
    return warnings
