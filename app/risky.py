"""Changes that run code on the host later: files the user's own tools execute or obey.

An agent cannot run anything on the host, but it can stage a file that the user's git, shell,
editor, build tool or CI runs the next time they touch the folder: a git hook, a
`core.fsmonitor` line, an `.envrc`, a Makefile recipe, a package.json script, a newly
executable file. The review marks each with what it would run and why that matters; such a
change is not approved along with the rest (`airlock commit` without paths leaves it staged
unless `--include-risky` or its path is named; "Approve all" leaves it unticked; a profile's
`commit = "auto"` never commits it).

The patterns are data (`CODE_PATHS`), matched against the last components of a path, so a
repository anywhere below a granted folder is covered. Two files are judged by their content
too: `.git/config` by the keys that name a command, package.json by its scripts; only what
the change adds or alters against the host's version is reported.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath

from app.text import printable


class Check(StrEnum):
    PATH = "path"  # the path alone says it runs code
    GIT_CONFIG = "git-config"  # only if it sets a key that runs a command
    PACKAGE_SCRIPTS = "package-scripts"  # only if its scripts change


@dataclass(frozen=True, slots=True)
class CodePath:
    """Files at `pattern` (path components, each an fnmatch pattern, matched against the end
    of a path) run code: `why`."""

    pattern: str
    why: str
    check: Check = Check.PATH

    def matches(self, parts: tuple[str, ...]) -> bool:
        wanted = self.pattern.split("/")
        return len(parts) >= len(wanted) and all(
            fnmatch.fnmatchcase(part, glob)
            for part, glob in zip(parts[-len(wanted) :], wanted, strict=True)
        )


_SHELL = "your shell runs it at start-up"
_GIT_CONFIG = "git's settings: git runs the commands some keys name"
CODE_PATHS: tuple[CodePath, ...] = (
    CodePath(".git/hooks/*", "a git hook: git runs it on commit, checkout, merge or push"),
    CodePath(".git/modules/*/hooks/*", "a git hook of a submodule: git runs it"),
    CodePath(".git/config", _GIT_CONFIG, Check.GIT_CONFIG),
    CodePath(".git/config.worktree", _GIT_CONFIG, Check.GIT_CONFIG),
    CodePath(".git/modules/*/config", _GIT_CONFIG, Check.GIT_CONFIG),
    CodePath(".gitconfig", _GIT_CONFIG, Check.GIT_CONFIG),
    CodePath(".config/git/config", _GIT_CONFIG, Check.GIT_CONFIG),
    CodePath(".envrc", "direnv runs it when you enter the folder"),
    CodePath(".vscode/tasks.json", "VS Code runs its tasks, some when the folder is opened"),
    CodePath(
        ".vscode/settings.json",
        "VS Code settings name programs it runs (interpreters, linters, terminals)",
    ),
    CodePath(".vscode/launch.json", "VS Code runs what its launch configurations name"),
    CodePath(".idea/runConfigurations/*", "an IntelliJ run configuration"),
    CodePath(".idea/workspace.xml", "IntelliJ's workspace: it holds run configurations"),
    *(
        CodePath(name, _SHELL)
        for name in (
            ".bashrc",
            ".bash_profile",
            ".bash_login",
            ".bash_logout",
            ".profile",
            ".zshrc",
            ".zshenv",
            ".zprofile",
            ".zlogin",
            ".zlogout",
            ".kshrc",
            ".cshrc",
            ".tcshrc",
            ".config/fish/config.fish",
            ".config/fish/conf.d/*",
            ".xprofile",
            ".xsessionrc",
            ".xinitrc",
        )
    ),
    CodePath(".config/autostart/*", "your desktop runs it when you log in"),
    CodePath(".config/systemd/user/*", "systemd runs what a user unit names"),
    CodePath(".npmrc", "npm's settings name programs it runs (script-shell, node-options)"),
    CodePath(
        "package.json",
        "npm runs its scripts (install scripts on `npm install`)",
        Check.PACKAGE_SCRIPTS,
    ),
    *(
        CodePath(name, "make runs its recipes")
        for name in ("Makefile", "makefile", "GNUmakefile", "*.mk")
    ),
    *(
        CodePath(name, "a task runner's recipes, run when you call it")
        for name in ("justfile", "Justfile", ".justfile", "Taskfile.yml", "Taskfile.yaml")
    ),
    CodePath(".pre-commit-config.yaml", "pre-commit runs these hooks on git commit"),
    CodePath(
        ".github/workflows/*", "a CI workflow: it runs on push, with the repository's secrets"
    ),
    *(
        CodePath(name, "a CI pipeline: it runs on push, with the project's secrets")
        for name in (
            ".gitlab-ci.yml",
            ".circleci/config.yml",
            ".travis.yml",
            "Jenkinsfile",
            "azure-pipelines.yml",
            ".buildkite/*",
            "bitbucket-pipelines.yml",
            ".drone.yml",
        )
    ),
)

# git config keys (section.key, or section.*.key for any subsection; lower case) whose value
# git runs as a command, or which bring in other settings that may.
GIT_COMMAND_KEYS: tuple[str, ...] = (
    "core.fsmonitor",
    "core.sshcommand",
    "core.pager",
    "core.editor",
    "core.askpass",
    "core.hookspath",
    "core.gitproxy",
    "sequence.editor",
    "gpg.program",
    "gpg.*.program",
    "credential.helper",
    "credential.*.helper",
    "diff.external",
    "diff.*.textconv",
    "diff.*.command",
    "merge.*.driver",
    "filter.*.clean",
    "filter.*.smudge",
    "filter.*.process",
    "pager.*",
    "web.browser",
    "browser.*.cmd",
    "man.*.cmd",
    "include.path",
    "includeif.*.path",
    "uploadpack.packobjectshook",
    "ssh.variant",
    "protocol.*.allow",
    "remote.*.uploadpack",
    "remote.*.receivepack",
    "remote.*.proxy",
    "http.proxy",
    "instaweb.httpd",
)
ALIAS_COMMAND = "!"  # alias.NAME = "!cmd" runs cmd in a shell

_SECTION = re.compile(r'^\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\]\s*(.*)$')
_ENTRY = re.compile(r"^\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=\s*(.*?))?\s*$")


def git_commands(text: str) -> set[tuple[str, str]]:
    """The (key, value) pairs of a git config file that make git run something. Lenient:
    what git would reject is left out, what it accepts (any case in section and key names,
    `[section.sub]`, a value on the header's line) is read."""
    found: set[tuple[str, str]] = set()
    section: str | None = None
    for raw in text.splitlines():
        line = raw
        header = _SECTION.match(line)
        if header:
            name, sub = header.group(1), header.group(2)
            if sub is None and "." in name:  # the old `[section.sub]` form
                name, _, sub = name.partition(".")
            section = name.lower() + (f".{sub}" if sub is not None else "")
            line = header.group(3)
            if not line.strip():
                continue
        if section is None or line.lstrip().startswith(("#", ";")):
            continue
        entry = _ENTRY.match(re.split(r"\s[#;]", line, maxsplit=1)[0])
        if entry is None:
            continue
        key = f"{section}.{entry.group(1).lower()}"
        value = (entry.group(2) or "true").strip().strip('"')
        if _runs_a_command(key, value):
            found.add((key, value))
    return found


def _runs_a_command(key: str, value: str) -> bool:
    first, _, rest = key.partition(".")
    if first == "alias":
        return value.startswith(ALIAS_COMMAND)
    middle, _, last = rest.rpartition(".")
    generic = f"{first}.*.{last}" if middle else f"{first}.*"
    return key in GIT_COMMAND_KEYS or generic in GIT_COMMAND_KEYS


def package_scripts(text: str) -> dict[str, str]:
    """A package.json's scripts; empty if it has none, or is not JSON npm could read."""
    try:
        package = json.loads(text)
    except ValueError:
        return {}
    scripts = package.get("scripts") if isinstance(package, dict) else None
    if not isinstance(scripts, dict):
        return {}
    return {str(k): str(v) for k, v in scripts.items()}


MAX_SHOWN = 240  # characters of a command: enough for a long path, not a whole script


def _shown(key: str, value: str) -> str:
    value = printable(value)
    return f"{printable(key)} = {value[: MAX_SHOWN - 1] + '…' if len(value) > MAX_SHOWN else value}"


def _index() -> tuple[dict[str, list[CodePath]], dict[str, list[CodePath]], list[CodePath]]:
    """The patterns by their last component when it is a plain name, else by the one before
    it when that is; the rest: a listing of 10 000 changes tries a few patterns per path,
    not all of them (2.8 s)."""
    by_name: dict[str, list[CodePath]] = {}
    by_parent: dict[str, list[CodePath]] = {}
    rest: list[CodePath] = []
    for code in CODE_PATHS:
        *parents, last = code.pattern.split("/")
        if not _GLOB.search(last):
            by_name.setdefault(last, []).append(code)
        elif parents and not _GLOB.search(parents[-1]):
            by_parent.setdefault(parents[-1], []).append(code)
        else:
            rest.append(code)
    return by_name, by_parent, rest


_GLOB = re.compile(r"[*?\[]")
_BY_NAME, _BY_PARENT, _ANY_NAME = _index()


def path_reasons(path: PurePath) -> list[CodePath]:
    """The patterns `path` matches, in the table's order."""
    parts = path.parts
    if not parts:
        return []
    candidates = [
        *_BY_NAME.get(parts[-1], ()),
        *(_BY_PARENT.get(parts[-2], ()) if len(parts) > 1 else ()),
        *_ANY_NAME,
    ]
    found = [code for code in candidates if code.matches(parts)]
    return sorted(found, key=CODE_PATHS.index) if len(found) > 1 else found


def content_reason(code: CodePath, new: str | None, old: str | None) -> str | None:
    """Why a file judged by its content (`code.check`) runs code, given its staged text
    (None: it could not be read as text, or is not what was listed) and the host's; None if
    nothing it adds or alters runs anything."""
    if code.check is Check.PATH:
        return code.why
    if new is None:
        return f"{code.why}; it could not be read to check it, so it counts as running code"
    if code.check is Check.GIT_CONFIG:
        added = sorted(git_commands(new) - git_commands(old or ""))
        if not added:
            return None
        return f"{code.why}: {'; '.join(_shown(k, v) for k, v in added)}"
    before = package_scripts(old or "")
    changed = {
        name: script for name, script in package_scripts(new).items() if before.get(name) != script
    }
    if not changed:
        return None
    return f"{code.why}: {'; '.join(_shown(k, v) for k, v in sorted(changed.items()))}"


def executable_reason(before: int | None, after: int | None) -> str | None:
    """Why a file whose permission bits go from `before` (None: a new file) to `after` runs
    code: an execute bit it did not have."""
    if after is None or not after & 0o111 & ~(before or 0):
        return None
    what = (
        f"new and executable ({after:04o})"
        if before is None
        else f"newly executable ({before:04o} -> {after:04o})"
    )
    return f"{what}: a program you or your tools may run"


def reasons_for(
    path: PurePath,
    mode_change: tuple[int | None, int] | None,
    is_file: bool,
    texts: Mapping[Check, tuple[str | None, str | None]] | None = None,
) -> list[str]:
    """Every reason a changed file at `path` runs code. `texts`: for a path judged by its
    content, (staged text, host text)."""
    found = []
    for code in path_reasons(path):
        if code.check is Check.PATH:
            found.append(code.why)
            continue
        new, old = (texts or {}).get(code.check, (None, None))
        reason = content_reason(code, new, old)
        if reason:
            found.append(reason)
    if is_file and mode_change is not None:
        reason = executable_reason(*mode_change)
        if reason:
            found.append(reason)
    return found
