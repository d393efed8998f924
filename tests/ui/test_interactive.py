"""`airlock run` on a real terminal: the agent gets a pseudo-terminal of its own (input,
size, resizes, Ctrl-C and friends), the user's terminal comes back as it was however the
session ends, piped stdin reaches the agent with its end, and every end is in the audit log.

Driven through a real pty against the real engine, as the unprivileged desktop user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from app.container import LABEL_ROLE, LABEL_SESSION
from tests.ptyterm import PtyProcess, command_line, descendants
from tests.support import AIRLOCK, DesktopUser, containers, profile_text
from tests.ui.test_handoff import daemon

__all__ = ["daemon"]

pytestmark = pytest.mark.docker

CTRL_BRACKET = b"\x1d"
PROMPT = r"\$ $"


def argv(tester: DesktopUser, *args: str) -> list[str]:
    env = dict(tester.env, TERM="xterm-256color", COLORTERM="truecolor")
    return [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        str(AIRLOCK),
        "run",
        "--in-process",
        *args,
    ]


@pytest.fixture
def terminal(tester: DesktopUser) -> Iterator[list[PtyProcess]]:
    started: list[PtyProcess] = []
    yield started
    for process in started:
        process.close()


def start(
    terminal: list[PtyProcess], tester: DesktopUser, *args: str, rows: int = 24, cols: int = 80
) -> PtyProcess:
    process = PtyProcess(argv(tester, *args), tester.base, rows, cols)
    terminal.append(process)
    return process


def shell_profile(tester: DesktopUser, image: str, extra: str = "") -> Path:
    return tester.write(
        "shell.toml", profile_text(image, ["bash", "--norc", "--noprofile", "-i"], extra=extra)
    )


def airlock_pid(process: PtyProcess) -> int:
    """The `airlock run` process itself (below runuser, when the tests run as root)."""
    for pid in [process.process.pid, *descendants(process.process.pid)]:
        line = command_line(pid)
        if "airlock run" in line and not line.startswith(("runuser", "env")):
            return pid
    raise AssertionError("no airlock process")


def agent_container(engine: docker.DockerClient, tester: DesktopUser) -> dict[str, object]:
    """The running agent of this tester's one session (other tests' run as the same uid)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = json.loads(tester.run("sessions", "--json").stdout or "[]")
        running = [r for r in live if r["state"] == "running"]
        found = running and containers(
            engine, f"{LABEL_SESSION}={running[0]['id']}", f"{LABEL_ROLE}=agent", stopped=False
        )
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("the agent's container never ran")


def audit(tester: DesktopUser) -> list[dict[str, object]]:
    result = tester.run("audit", "show", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_an_interactive_shell_owns_a_real_terminal(
    tester: DesktopUser, agent_image: str, terminal: list[PtyProcess]
) -> None:
    p = start(terminal, tester, "-p", str(shell_profile(tester, agent_image)))
    before = p.stty()
    p.expect(PROMPT)
    p.send("tty; echo $TERM $COLORTERM; stty size; echo $((6*7))\r")
    p.expect(r"/dev/pts/\d+")
    p.expect("xterm-256color truecolor")
    p.expect(r"24 80\r\n")
    p.expect(r"42\r\n")
    p.resize(33, 101)
    time.sleep(0.3)
    p.send("stty size\r")
    p.expect(r"33 101\r\n")
    # Ctrl-C interrupts the agent's foreground program, and the session goes on.
    p.send("sleep 300; echo not-interrupted\r")
    time.sleep(1)
    p.send(b"\x03")
    p.expect(r"\^C")
    p.send("echo still here\r")
    p.expect(r"still here\r\n")
    # Ctrl-Z suspends it (job control works: bash has a terminal), Ctrl-D ends the shell.
    p.send("sleep 300\r")
    time.sleep(1)
    p.send(b"\x1a")
    p.expect("Stopped")
    p.send("fg\r")  # back in the foreground, where Ctrl-C ends it
    p.expect(r"sleep 300\r\n")
    time.sleep(0.5)
    p.send(b"\x03")
    p.expect(PROMPT)
    p.send("jobs; echo jobs-done\r")
    p.expect(r"(?<!echo )jobs-done\r\n")  # no job left
    p.send("(exit 7)\r")
    p.expect(r"\(exit 7\)\r\n")  # the command taken, then the prompt after it
    p.expect(PROMPT)
    p.send(b"\x04")  # bash leaves with the status of its last command: airlock passes it on
    assert p.wait() == 7
    assert "\nnot-interrupted" not in p.seen.decode(errors="replace")
    assert p.stty() == before


def test_a_full_screen_program_draws_and_reads_keys(
    tester: DesktopUser, agent_image: str, terminal: list[PtyProcess]
) -> None:
    # It draws its size, and again on each resize (the engine, Docker 20.10 here, sizes the
    # agent's terminal only once it runs: a quick program can see 24x80 first).
    program = (
        "import curses\n"
        "def main(s):\n"
        "    while True:\n"
        "        h, w = s.getmaxyx()\n"
        "        s.erase()\n"
        "        s.addstr(3, 5, f'curses {h}x{w}')\n"
        "        s.refresh()\n"
        "        key = s.getkey()\n"
        "        if key != 'KEY_RESIZE':\n"
        "            return key\n"
        "print('key', curses.wrapper(main))\n"
    )
    path = tester.write("curses.toml", profile_text(agent_image, ["python3", "-c", program]))
    p = start(terminal, tester, "-p", str(path), rows=20, cols=70)
    before = p.stty()
    p.expect(r"\x1b\[\?1049h")  # the alternate screen: terminfo for the user's TERM
    p.expect(r"curses 20x70")
    p.resize(30, 90)
    p.expect(r"curses 30x90")
    p.send("q")
    p.expect(r"key q")
    assert p.wait() == 0
    assert p.stty() == before


def test_the_escape_key_opens_airlocks_menu_and_returns(
    tester: DesktopUser, agent_image: str, terminal: list[PtyProcess]
) -> None:
    notes = tester.mkdir("notes")
    p = start(terminal, tester, "-p", str(shell_profile(tester, agent_image)), "-g", str(notes))
    p.expect(PROMPT)
    p.send(CTRL_BRACKET)
    p.expect(r"airlock menu \(Ctrl-\]\)")
    p.send("g\n")
    p.expect(rf"ro\s+{notes}")
    p.expect("airlock menu")
    p.send("\n")  # back to the agent, which gets nothing of what went to the menu
    p.send("echo back $((1+1))\r")
    p.expect(r"back 2\r\n")
    assert "bash: g" not in p.seen.decode(errors="replace")
    # The menu stops the session too, with its reason recorded.
    p.send(CTRL_BRACKET)
    p.expect("airlock menu")
    p.send("s\n")
    p.wait()
    ends = [r for r in audit(tester) if r["kind"] == "session.exited"]
    assert ends and "menu" in str(ends[-1]["details"]["reason"])  # type: ignore[index]


def test_the_terminal_comes_back_when_the_agent_is_killed(
    tester: DesktopUser, agent_image: str, terminal: list[PtyProcess], engine: docker.DockerClient
) -> None:
    p = start(terminal, tester, "-p", str(shell_profile(tester, agent_image)))
    before = p.stty()
    p.expect(PROMPT)
    assert p.stty() != before  # raw while the agent has it
    engine.api.kill(agent_container(engine, tester)["Id"], signal="SIGKILL")
    assert p.wait() == 137
    assert p.stty() == before


def test_the_terminal_comes_back_when_airlock_itself_is_killed(
    tester: DesktopUser, agent_image: str, terminal: list[PtyProcess], engine: docker.DockerClient
) -> None:
    p = start(terminal, tester, "-p", str(shell_profile(tester, agent_image)))
    before = p.stty()
    p.expect(PROMPT)
    session = str(agent_container(engine, tester)["Labels"][LABEL_SESSION])  # type: ignore[index]
    assert p.stty() != before
    os.kill(airlock_pid(p), signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while p.stty() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.stty() == before
    # Its reaper removed the agent; the next command's sweep records how the session ended.
    deadline = time.monotonic() + 30
    while containers(engine, f"{LABEL_SESSION}={session}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert containers(engine, f"{LABEL_SESSION}={session}") == []
    assert tester.run("sessions").returncode == 0
    swept = [r for r in audit(tester) if r["kind"] == "session.swept" and r["session"] == session]
    assert swept and "killed" in str(swept[0]["details"]["reason"])  # type: ignore[index]


def test_piped_stdin_reaches_the_agent_with_its_end(tester: DesktopUser, agent_image: str) -> None:
    path = tester.write("cat.toml", profile_text(agent_image, ["cat"]))
    command = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in tester.env.items()),
        str(AIRLOCK),
        "run",
        "--in-process",
        "-p",
        str(path),
    ]
    result = subprocess.run(
        command, input="hi\nthere\n", capture_output=True, text=True, timeout=120, cwd=tester.base
    )
    assert (result.returncode, result.stdout) == (0, "hi\nthere\n"), result.stderr
    # -t: a terminal for the agent even from a pipe (its input then goes through the pty).
    tty = tester.write("tty.toml", profile_text(agent_image, ["sh", "-c", "tty; wc -l"]))
    forced = subprocess.run(
        [*command[:-2], "-t", "-p", str(tty)],
        input="a\nb\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tester.base,
    )
    assert forced.returncode == 0, forced.stderr
    assert "/dev/pts/" in forced.stdout


def test_every_end_of_a_session_is_recorded_with_its_reason(
    tester: DesktopUser, agent_image: str, terminal: list[PtyProcess], engine: docker.DockerClient
) -> None:
    long = tester.write("long.toml", profile_text(agent_image, ["sleep", "300"]))

    def ended(session: str) -> str:
        records = [
            r
            for r in audit(tester)
            if r["session"] == session and r["kind"] in ("session.exited", "session.swept")
        ]
        assert records, f"no end of {session} in the audit log: {audit(tester)[-4:]}"
        return str(records[-1]["details"]["reason"])  # type: ignore[index]

    # Interrupted: SIGINT to airlock (Ctrl-C goes to the agent when it has the terminal).
    p = start(terminal, tester, "-p", str(long))
    session = str(agent_container(engine, tester)["Labels"][LABEL_SESSION])  # type: ignore[index]
    os.kill(airlock_pid(p), signal.SIGINT)
    assert p.wait() == 130
    assert "interrupted" in ended(session)
    # `airlock stop`.
    p = start(terminal, tester, "-p", str(long))
    session = str(agent_container(engine, tester)["Labels"][LABEL_SESSION])  # type: ignore[index]
    assert tester.run("stop", session).returncode == 0
    p.wait()
    assert ended(session) == "stopped by `airlock stop`"
    # Its timeout.
    p = start(terminal, tester, "-p", str(long), "--timeout", "2s")
    assert p.wait() == 124
    assert "ran out of time" in p.seen.decode(errors="replace")
    session = [r for r in audit(tester) if r["kind"] == "session.timed-out"][-1]["session"]
    assert ended(str(session)) == "timed out"


# The same through a running supervisor (`airlock daemon`): the hand-off carries keystrokes,
# resizes, the end of input and the menu's stop beside the output.


def handed(tester: DesktopUser, *args: str) -> list[str]:
    return [part for part in argv(tester, "--ask", "deny", *args) if part != "--in-process"]


def supervised_by_daemon(tester: DesktopUser) -> dict[str, object]:
    record = json.loads(tester.run("sessions", "--json").stdout)[-1]
    supervisor_pid = int(str(record["supervisor"]).split(":")[0])
    assert "daemon" in Path(f"/proc/{supervisor_pid}/cmdline").read_text()
    return dict(record)


def test_a_handed_off_shell_owns_the_terminal_too(
    tester: DesktopUser, agent_image: str, daemon: Path, terminal: list[PtyProcess]
) -> None:
    notes = tester.mkdir("notes")
    p = PtyProcess(
        handed(tester, "-p", str(shell_profile(tester, agent_image)), "-g", str(notes)),
        tester.base,
        22,
        77,
    )
    terminal.append(p)
    before = p.stty()
    p.expect(PROMPT)
    supervised_by_daemon(tester)
    p.send("tty; echo $TERM; stty size\r")
    p.expect(r"/dev/pts/\d+")
    p.expect(r"xterm-256color")
    p.expect(r"22 77\r\n")
    p.resize(31, 99)
    time.sleep(0.3)
    p.send("stty size\r")
    p.expect(r"31 99\r\n")
    p.send("sleep 300\r")
    time.sleep(1)
    p.send(b"\x03")
    p.expect(r"\^C")
    p.send(CTRL_BRACKET)
    p.expect(r"airlock menu")
    p.send("g\n")
    p.expect(rf"ro\s+{notes}")
    p.send("\n")
    p.send("echo back; (exit 6)\r")
    p.expect(r"back\r\n")
    p.expect(PROMPT)  # a Ctrl-D typed while a command runs is that command's, not bash's
    p.send(b"\x04")
    assert p.wait() == 6
    assert p.stty() == before


def test_piped_stdin_is_handed_off_with_its_end(
    tester: DesktopUser, agent_image: str, daemon: Path
) -> None:
    path = tester.write("cat.toml", profile_text(agent_image, ["sh", "-c", "cat; echo end"]))
    command = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in tester.env.items()),
        str(AIRLOCK),
        "run",
        "-p",
        str(path),
    ]
    result = subprocess.run(
        command, input="hi\n" * 50_000, capture_output=True, text=True, timeout=120, cwd=tester.base
    )
    assert (result.returncode, result.stdout) == (0, "hi\n" * 50_000 + "end\n"), result.stderr
    record = json.loads(tester.run("sessions", "--all", "--json").stdout)[-1]
    supervisor_pid = int(str(record["supervisor"]).split(":")[0])
    assert "daemon" in Path(f"/proc/{supervisor_pid}/cmdline").read_text()


def test_every_end_of_a_handed_off_session_is_recorded(
    tester: DesktopUser,
    agent_image: str,
    daemon: Path,
    terminal: list[PtyProcess],
    engine: docker.DockerClient,
) -> None:
    long = tester.write("long.toml", profile_text(agent_image, ["sleep", "300"]))

    def ended(session: str) -> str:
        records = [
            r
            for r in audit(tester)
            if r["session"] == session and r["kind"] in ("session.exited", "session.swept")
        ]
        assert records, f"no end of {session} in the audit log"
        return str(records[-1]["details"]["reason"])  # type: ignore[index]

    def started() -> tuple[PtyProcess, str]:
        p = PtyProcess(handed(tester, "-p", str(long)), tester.base)
        terminal.append(p)
        return p, str(agent_container(engine, tester)["Labels"][LABEL_SESSION])  # type: ignore[index]

    # The client interrupted (SIGINT) or killed: the supervisor ends the session.
    p, session = started()
    os.kill(airlock_pid(p), signal.SIGINT)
    p.wait()
    assert "`airlock run` was interrupted or killed" in ended(session)
    p, session = started()
    assert p.modes() != p.modes_before
    os.kill(airlock_pid(p), signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while p.modes() != p.modes_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.modes() == p.modes_before  # the client's watchdog restored the terminal
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "interrupted" not in str(
        [r for r in audit(tester) if r["session"] == session]
    ):
        time.sleep(0.2)
    assert "`airlock run` was interrupted or killed" in ended(session)
    # `airlock stop`, and the menu's stop.
    p, session = started()
    assert tester.run("stop", session).returncode == 0
    p.wait()
    assert ended(session) == "stopped by `airlock stop`"
    p, session = started()
    p.send(CTRL_BRACKET)
    p.expect("airlock menu")
    p.send("s\n")
    p.wait()
    assert ended(session) == "stopped from the terminal's Airlock menu"
    # Its timeout.
    p = PtyProcess(handed(tester, "-p", str(long), "--timeout", "2s"), tester.base)
    terminal.append(p)
    assert p.wait() == 124
    session = str([r for r in audit(tester) if r["kind"] == "session.timed-out"][-1]["session"])
    assert ended(session) == "timed out"
    # The supervisor itself killed: its reaper removes the agent, the next command records it.
    p, session = started()
    supervisor = int(str(supervised_by_daemon(tester)["supervisor"]).split(":")[0])
    os.kill(supervisor, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 30
    while containers(engine, f"{LABEL_SESSION}={session}") and time.monotonic() < deadline:
        time.sleep(0.1)
    tester.run("sessions")
    assert "ended with its supervisor" in ended(session)
    daemon.unlink()  # what the killed daemon left; the next one would replace it
