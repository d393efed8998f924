"""`airlock homes` through the real command line: a kept home is listed with its size, kept
across runs, and removed by `airlock homes rm PROFILE`."""

from __future__ import annotations

import json

import pytest

from tests.support import DesktopUser, profile_text

pytestmark = pytest.mark.docker


def test_homes_are_listed_and_removed(tester: DesktopUser, agent_image: str) -> None:
    kept = '[home]\npersist = true\nsize = "16m"\n'
    write = tester.write(
        "w.toml",
        profile_text(
            agent_image,
            ["sh", "-c", "mkdir -p ~/.config/tool && echo token-free > ~/.config/tool/settings"],
        )
        + kept,
    )
    read = tester.write(
        "r.toml", profile_text(agent_image, ["sh", "-c", "cat ~/.config/tool/settings"]) + kept
    )
    assert tester.run("run", "--in-process", "-p", str(write)).returncode == 0
    again = tester.run("run", "--in-process", "-p", str(read))
    assert (again.returncode, again.stdout) == (0, "token-free\n"), again.stderr
    listed = json.loads(tester.run("homes", "--json").stdout)
    assert [(h["profile"], h["bytes"] > 0) for h in listed] == [("test-agent", True)]
    assert "test-agent" in tester.run("homes").stdout
    bad = tester.run("homes", "rm", "../x")
    assert bad.returncode != 0 and "not a profile name" in bad.stderr
    removed = tester.run("homes", "rm", "test-agent")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(tester.run("homes", "--json").stdout) == []
    gone = tester.run("run", "--in-process", "-p", str(read))
    assert gone.returncode != 0 and "token-free" not in gone.stdout
