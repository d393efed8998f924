"""`airlock sessions --all`, `airlock session` and `airlock forget` through the real command
line: ended sessions are listed with their status and duration, their output is printed
again (filtered for the terminal), the history keeps within its bound, and one is forgotten."""

from __future__ import annotations

import json

import pytest

from tests.support import DesktopUser, profile_text

pytestmark = pytest.mark.docker


def test_ended_sessions_are_listed_shown_and_forgotten(
    tester: DesktopUser, agent_image: str
) -> None:
    notes = tester.write("notes.txt", "n\n").parent
    agent = tester.write(
        "a.toml",
        profile_text(agent_image, ["sh", "-c", "printf 'one\\n\\033]0;title\\007two\\n'; exit 5"]),
    )
    first = tester.run("run", "--in-process", "-p", str(agent), "-g", str(notes))
    assert first.returncode == 5, first.stderr
    second = tester.run("run", "--in-process", "-p", str(agent))
    assert second.returncode == 5, second.stderr

    listed = json.loads(tester.run("sessions", "--all", "--json").stdout)
    assert [(s["state"], s["exit_code"]) for s in listed] == [("exited", 5), ("exited", 5)]
    assert all(s["duration"] > 0 for s in listed)
    older, newer = (s["id"] for s in listed)
    table = tester.run("sessions", "--all").stdout
    assert "DURATION" in table and "exited with status 5" in table

    shown = tester.run("session", older)
    assert shown.returncode == 0, shown.stderr
    assert f"{notes}  (read only)" in shown.stdout
    assert "0 network request(s)" in shown.stdout
    output = tester.run("session", older, "--output")
    assert output.stdout == "one\ntwo\n"  # the title sequence filtered out
    details = json.loads(tester.run("session", older, "--json").stdout)
    assert details["session"]["exit_code"] == 5 and details["output"]["cut"] == 0

    kept = tester.run("session", "--keep", "1")
    assert kept.returncode == 0 and "keeps the last 1 ended sessions" in kept.stdout
    assert [s["id"] for s in json.loads(tester.run("sessions", "--all", "--json").stdout)] == [
        newer
    ]
    forgotten = tester.run("forget", newer)
    assert forgotten.returncode == 0, forgotten.stderr
    assert json.loads(tester.run("sessions", "--all", "--json").stdout) == []
    missing = tester.run("session", newer)
    assert missing.returncode != 0 and "no session" in missing.stderr
