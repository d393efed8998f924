"""Questions while the agent owns the terminal: none is printed there and no key typed at the
agent answers one; `airlock ask`, from a second terminal, does."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.portal.test_portal_container import CLIENT
from tests.ptyterm import PtyProcess
from tests.support import AIRLOCK, DesktopUser, profile_text
from tests.ui.test_handoff import daemon
from tests.ui.test_interactive import argv

__all__ = ["daemon"]

pytestmark = pytest.mark.docker

# The agent asks the portal for a file, then reads what was typed at it meanwhile.
AGENT = (
    CLIENT
    + """
ask OpenFile t1 'pick the notes'
stty -echo
while IFS= read -r line; do echo "agent got: $line"; [ "$line" = end ] && exit 0; done
"""
)


@pytest.fixture
def terminals() -> Iterator[list[PtyProcess]]:
    started: list[PtyProcess] = []
    yield started
    for process in started:
        process.close()


def test_a_question_is_answered_by_airlock_ask_not_by_keys_typed_at_the_agent(
    tester: DesktopUser, agent_image: str, terminals: list[PtyProcess]
) -> None:
    notes = tester.write("notes/todo.md", "- ship it\n")
    path = tester.write("asker.toml", profile_text(agent_image, ["bash", "-c", AGENT]))
    agent = PtyProcess(argv(tester, "-p", str(path)), tester.base)
    terminals.append(agent)
    env = dict(tester.env, TERM="xterm")
    ask_argv = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        str(AIRLOCK),
        "ask",
        "--wait",
        "60",
    ]
    asker = PtyProcess(ask_argv, tester.base)
    terminals.append(asker)
    asker.expect(r"asks to .*\r\n", timeout=90)
    # Keys that would answer a prompt ("once", a path, "yes"), typed at the agent meanwhile.
    for keys in ("o\r", f"{notes}\r", "y\r", "s\r"):
        agent.send(keys)
        time.sleep(0.1)
    asker.expect(r"Allow\?")
    asker.send("o\r")
    asker.expect("Path to give")
    asker.send(f"{notes}\r")
    asker.expect(r"\[y/N\]")
    asker.send("n\r")
    assert asker.wait() == 0
    agent.expect(r"response t1 0 /run/airlock/doc/\w+/todo.md")
    # What was typed went to the agent, every key of it.
    agent.expect(r"agent got: o\r\n")
    agent.expect(rf"agent got: {notes}\r\n")
    agent.expect(r"agent got: y\r\n")
    agent.expect(r"agent got: s\r\n")
    agent.send("end\r")
    assert agent.wait() == 0
    screen = agent.seen.decode(errors="replace")
    assert "Allow?" not in screen and "asks to" not in screen  # nothing of it on the agent's
    records = [
        json.loads(line) for line in tester.run("audit", "show", "--json").stdout.splitlines()
    ]
    answered = [r for r in records if r["kind"] == "request.answered"]
    assert answered and answered[-1]["details"]["by"] == "airlock ask"


def test_an_unanswered_question_is_denied_and_summed_up_at_the_end(
    tester: DesktopUser, agent_image: str, terminals: list[PtyProcess]
) -> None:
    path = tester.write(
        "asker.toml",
        profile_text(
            agent_image,
            ["sh", "-c", "curl -s -o /dev/null -w 'status %{http_code}\\n' http://example.com/"],
            extra='[network]\nask = ["example.com:80"]\n[approval]\ntimeout = "2s"\n',
        ),
    )
    agent = PtyProcess(argv(tester, "-p", str(path)), tester.base)
    terminals.append(agent)
    agent.expect(r"status 403", timeout=90)
    agent.wait()
    agent.expect(
        r"airlock: denied while the agent ran: network.host example.com:80 "
        r"\(no answer in time\)"
    )


def test_the_escape_menu_answers_a_waiting_question_with_the_agents_output_held(
    tester: DesktopUser, agent_image: str, terminals: list[PtyProcess]
) -> None:
    notes = tester.write("notes/todo.md", "- ship it\n")
    path = tester.write("asker.toml", profile_text(agent_image, ["bash", "-c", AGENT]))
    agent = PtyProcess(argv(tester, "-p", str(path)), tester.base)
    terminals.append(agent)
    agent.expect(r"objectpath", timeout=90)  # it asked
    agent.send(b"\x1d")
    agent.expect(r"answer questions \(1 waiting\)")
    agent.send("a\n")
    agent.expect(r"asks to .*\r\n")
    agent.expect(r"Allow\?")
    agent.send("o\n")
    agent.expect("Path to give")
    agent.send(f"{notes}\n")
    agent.expect(r"\[y/N\]")
    agent.send("n\n")
    agent.expect(r"answer questions \(0 waiting\)")
    held = agent.seen[agent._mark :]
    assert b"response t1" not in held  # the agent's output waited behind the menu
    agent.send("r\n")
    agent.expect(r"response t1 0 /run/airlock/doc/\w+/todo.md")
    agent.send("end\r")
    assert agent.wait() == 0


def test_a_handed_off_session_sums_up_its_denials_too(
    tester: DesktopUser, agent_image: str, daemon: Path, terminals: list[PtyProcess]
) -> None:
    path = tester.write(
        "asker.toml",
        profile_text(
            agent_image,
            ["sh", "-c", "curl -s -o /dev/null -w 'status %{http_code}\\n' http://example.com/"],
            extra='[network]\nask = ["example.com:80"]\n[approval]\ntimeout = "2s"\n',
        ),
    )
    handed = [part for part in argv(tester, "-p", str(path)) if part != "--in-process"]
    agent = PtyProcess(handed, tester.base)
    terminals.append(agent)
    agent.expect(r"status 403", timeout=90)
    agent.wait()
    agent.expect(
        r"airlock: denied while the agent ran: network.host example.com:80 "
        r"\(no answer in time\)"
    )
    record = json.loads(tester.run("sessions", "--all", "--json").stdout)[-1]
    assert "daemon" in Path(f"/proc/{str(record['supervisor']).split(':')[0]}/cmdline").read_text()


def test_another_user_cannot_list_or_answer_the_questions(daemon: Path) -> None:
    deadline = time.monotonic() + 30
    while not list((daemon.parent / "ask").glob("*.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (path,) = (daemon.parent / "ask").glob("*.sock")
    assert (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o700, 0o600)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))  # root can reach it despite the modes; others cannot at all
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b'{"op": "list"}\n')
        reply = sock.recv(4096)
    assert json.loads(reply) == {"error": "not your supervisor"}
