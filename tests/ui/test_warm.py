"""Warm start: `airlock run` with no supervisor running starts one in the background and
hands its session to it; the next run finds it; it leaves after an idle period, leaving no
container behind; and an agent that owns the terminal asks through it via `airlock ask`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from app.container import LABEL_OWNER, LABEL_SUPERVISOR
from tests.ptyterm import PtyProcess, command_line
from tests.support import AIRLOCK, DesktopUser, containers, profile_text
from tests.ui.test_ask import AGENT
from tests.ui.test_interactive import argv

pytestmark = pytest.mark.docker


def supervisor_of_last(tester: DesktopUser) -> int:
    record = json.loads(tester.run("sessions", "--all", "--json").stdout)[-1]
    return int(str(record["supervisor"]).split(":")[0])


@pytest.fixture
def warm(tester: DesktopUser) -> Iterator[dict[str, str]]:
    env = {"AIRLOCK_AUTOSTART": "1", "AIRLOCK_IDLE_EXIT": "4"}
    yield env
    sock = Path(tester.env["XDG_RUNTIME_DIR"]) / "airlock" / "supervisor.sock"
    deadline = time.monotonic() + 30
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_run_starts_a_background_supervisor_that_later_leaves(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient, warm: dict[str, str]
) -> None:
    path = tester.write("hello.toml", profile_text(agent_image, ["echo", "hi"]))
    first = tester.run("run", "-p", str(path), extra_env=warm)
    assert (first.returncode, first.stdout) == (0, "hi\n"), first.stderr
    daemon = supervisor_of_last(tester)
    assert "daemon --background" in command_line(daemon)
    second = tester.run("run", "-p", str(path), extra_env=warm)
    assert (second.returncode, second.stdout) == (0, "hi\n"), second.stderr
    assert supervisor_of_last(tester) == daemon  # the same, warm one
    deadline = time.monotonic() + 30
    while Path(f"/proc/{daemon}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{daemon}").exists(), "the idle supervisor never left"
    assert not (Path(tester.env["XDG_RUNTIME_DIR"]) / "airlock" / "supervisor.sock").exists()
    # Nothing of it is left running: no agent, no network sidecar kept ahead.
    left = [
        c
        for c in containers(engine, f"{LABEL_OWNER}={tester.uid}")
        if str(c["Labels"].get(LABEL_SUPERVISOR, "")).startswith(f"{daemon}:")
    ]  # type: ignore[attr-defined]
    assert left == []


def test_an_agent_on_a_terminal_asks_through_the_warm_supervisor(
    tester: DesktopUser, agent_image: str, warm: dict[str, str]
) -> None:
    notes = tester.write("notes/todo.md", "- ship it\n")
    path = tester.write("asker.toml", profile_text(agent_image, ["bash", "-c", AGENT]))
    env_argv = [part for part in argv(tester, "-p", str(path)) if part != "--in-process"]
    at = env_argv.index(str(AIRLOCK))
    env_argv[at:at] = [f"{k}={v}" for k, v in warm.items()]
    agent = PtyProcess(env_argv, tester.base)
    asker = None
    try:
        agent.expect(r"objectpath", timeout=90)
        assert "daemon --background" in command_line(supervisor_of_last(tester))
        ask_env = dict(tester.env, TERM="xterm")
        asker = PtyProcess(
            [
                *tester.prefix,
                "env",
                "-i",
                *(f"{k}={v}" for k, v in ask_env.items()),
                str(AIRLOCK),
                "ask",
            ],
            tester.base,
        )
        asker.expect(r"Allow\?")
        asker.send("o\r")
        asker.expect("Path to give")
        asker.send(f"{notes}\r")
        asker.expect(r"\[y/N\]")
        asker.send("n\r")
        assert asker.wait() == 0
        agent.expect(r"response t1 0 /run/airlock/doc/\w+/todo.md")
        agent.send("end\r")
        assert agent.wait() == 0
        assert agent.modes() == agent.modes_before
    finally:
        agent.close()
        if asker is not None:
            asker.close()
