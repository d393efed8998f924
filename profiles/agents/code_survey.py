#!/usr/bin/env python3
"""Demo agent: survey a source tree (files, lines per language, TODO/FIXME) into SURVEY.md."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

from agentkit import Agent, shown

NAME = "code_survey"
AGENT = Agent(NAME)
OUTPUT = "SURVEY.md"
MAX_BYTES = 5_000_000  # bigger files are generated or data, not code someone maintains
MAX_MARKERS = 200
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", "build", "dist"}
LANGUAGES = {
    ".py": "Python",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".jsx": "JavaScript",
    ".c": "C",
    ".h": "C/C++ header",
    ".cc": "C++",
    ".cpp": "C++",
    ".hpp": "C/C++ header",
    ".rs": "Rust",
    ".go": "Go",
    ".java": "Java",
    ".kt": "Kotlin",
    ".rb": "Ruby",
    ".php": "PHP",
    ".sh": "Shell",
    ".bash": "Shell",
    ".html": "HTML",
    ".css": "CSS",
    ".scss": "CSS",
    ".sql": "SQL",
    ".md": "Markdown",
    ".toml": "TOML",
    ".yaml": "YAML",
    ".yml": "YAML",
    ".json": "JSON",
    ".cs": "C#",
    ".swift": "Swift",
    ".lua": "Lua",
    ".pl": "Perl",
    ".r": "R",
}
MARKER = re.compile(r"\b(TODO|FIXME|XXX|HACK)\b[:(\s]?(.*)")


def survey(root: Path) -> tuple[Counter[str], Counter[str], list[str]]:
    files: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    markers: list[str] = []
    # os.walk does not follow symlinked directories, so a link loop cannot trap us.
    for folder, dirs, names in os.walk(root, onerror=AGENT.report_skip):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(folder, name)
            language = LANGUAGES.get(path.suffix.lower())
            if language is None or name == OUTPUT or not path.is_file():
                continue
            try:
                with path.open("rb") as f:
                    data = f.read(MAX_BYTES)
            except OSError as e:
                AGENT.say(f"skipping {shown(path)}: {e.strerror}")
                continue
            if b"\0" in data[:4096]:
                continue  # binary despite its name
            text = data.decode("utf-8", errors="replace").splitlines()
            files[language] += 1
            lines[language] += len(text)
            rel = path.relative_to(root).as_posix()
            for number, line in enumerate(text, 1):
                if len(markers) < MAX_MARKERS and MARKER.search(line):
                    markers.append(f"- `{shown(rel)}:{number}` {line.strip()[:160]}")
    return files, lines, markers


def render(files: Counter[str], lines: Counter[str], markers: list[str]) -> str:
    out = ["# Source survey", "", "| Language | Files | Lines |", "|---|---:|---:|"]
    out += [f"| {lang} | {files[lang]} | {lines[lang]} |" for lang, _ in lines.most_common()]
    out.append(f"| **Total** | {sum(files.values())} | {sum(lines.values())} |")
    out += ["", f"## TODO / FIXME ({len(markers)})", ""]
    out += markers or ["None found."]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".")
    AGENT.say(f"surveying {shown(root.resolve())}")
    files, lines, markers = survey(root)
    count = sum(files.values())
    AGENT.say(f"{count} source files in {len(files)} languages, {len(markers)} TODO/FIXME lines")
    AGENT.write_or_print(root, OUTPUT, render(files, lines, markers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
