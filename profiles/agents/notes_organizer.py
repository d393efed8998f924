#!/usr/bin/env python3
"""Demo agent: summarise the Markdown and text notes in a folder into summary.md."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from agentkit import Agent, shown

NAME = "notes_organizer"
AGENT = Agent(NAME)
OUTPUT = "summary.md"
SUFFIXES = {".md", ".markdown", ".txt"}
MAX_BYTES = 2_000_000  # a "note" bigger than this is not a note; read only its start
TAG = re.compile(r"(?<![\w#&/])#([A-Za-z][\w-]{0,40})")
TODO = re.compile(r"^\s*(?:[-*+]\s*\[ \]\s*|(?:[-*+]\s*)?(?:TODO|FIXME)\b[:\s]*)(.+)$")
HEADING = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$")


def find_notes(root: Path) -> list[Path]:
    found: list[Path] = []
    # os.walk does not follow symlinked directories, so a link loop cannot trap us.
    for folder, dirs, files in os.walk(root, onerror=AGENT.report_skip):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix.lower() in SUFFIXES and path.name != OUTPUT and path.is_file():
                found.append(path)
    return found


def read_note(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES)
    except OSError as e:
        AGENT.say(f"skipping {shown(path)}: {e.strerror}")
        return None
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Note:
    path: str
    title: str
    words: int
    todos: tuple[str, ...]
    tags: frozenset[str]


def summarise(root: Path, path: Path, text: str) -> Note:
    lines = text.splitlines()
    title = next((m.group(1) for m in map(HEADING.match, lines) if m), None)
    todos = (m.group(1).strip() for m in map(TODO.match, lines) if m)
    return Note(
        path=shown(path.relative_to(root).as_posix()),
        title=title or shown(path.stem),
        words=len(text.split()),
        todos=tuple(t for t in todos if t),
        # "# Heading" is not a tag; "#tag" inside a line is.
        tags=frozenset(t.lower() for ln in lines if not HEADING.match(ln) for t in TAG.findall(ln)),
    )


def render(notes: list[Note]) -> str:
    out = ["# Notes summary", "", f"{len(notes)} notes, {sum(n.words for n in notes)} words."]
    out += ["", "## Notes", ""]
    out += [f"- **{n.title}** (`{n.path}`, {n.words} words)" for n in notes]
    tags: dict[str, list[str]] = {}
    for n in notes:
        for tag in n.tags:
            tags.setdefault(tag, []).append(n.title)
    if tags:
        out += ["", "## Tags", ""]
        out += [f"- #{tag}: {', '.join(titles)}" for tag, titles in sorted(tags.items())]
    todos = [f"- [ ] {todo} _(from {n.title})_" for n in notes for todo in n.todos]
    if todos:
        out += ["", "## To do", "", *todos]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".")
    paths = find_notes(root)
    AGENT.say(f"found {len(paths)} notes in {shown(root.resolve())}")
    notes = []
    for i, path in enumerate(paths, 1):
        text = read_note(path)
        if text is None:
            continue
        AGENT.say(f"[{i}/{len(paths)}] reading {shown(path.relative_to(root))}")
        notes.append(summarise(root, path, text))
    AGENT.write_or_print(root, OUTPUT, render(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
