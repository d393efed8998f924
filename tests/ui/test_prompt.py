"""The terminal prompt on a real pseudo-terminal: what the person sees, and what their typing
answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.consent import Answer, ConsentBroker, ConsentRequest, RequestKind, Verdict, new_request_id
from app.events import EventBus
from app.grants import Lifetime, Mode
from ui.prompt import TerminalPrompt, describe, parse_duration_choice


@contextlib.contextmanager
def pty() -> Iterator[tuple[int, Path]]:
    master, slave = os.openpty()
    try:
        yield master, Path(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


_SEEN: dict[int, bytes] = {}  # what `ask` read off a terminal while it waited for the question


def screen(master: int) -> str:
    os.set_blocking(master, False)
    out = _SEEN.pop(master, b"")
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(master, 65536):
            out += chunk
    return out.decode(errors="replace")


def request(
    kind: RequestKind = RequestKind.FILE_OPEN, timeout: float = 10, **details: object
) -> ConsentRequest:
    return ConsentRequest(
        new_request_id(),
        "s1",
        "notes",
        kind,
        "open a file",
        {"image": "airlock-agent:bookworm", **details},
        "Open \x1b[31mthe notes\u202e",
        timeout,
    )


def ask(
    tty: Path,
    req: ConsentRequest,
    typed: str,
    master: int,
    cwd: Path | None = None,
    ahead: str = "",
) -> Answer:
    """Asks on the terminal and types `typed` once the question is on screen, as a person
    would (`ahead` is typed before it: the prompt must throw that away)."""
    broker = ConsentBroker(EventBus(), TerminalPrompt(tty, cwd))
    answers: list[Answer] = []
    os.write(master, ahead.encode())
    asker = threading.Thread(target=lambda: answers.append(asyncio.run(broker.ask(req))))
    asker.start()
    seen = b""
    deadline = time.monotonic() + 10
    while b"Allow?" not in seen and asker.is_alive() and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 65536)
    _SEEN[master] = seen
    os.write(master, typed.encode())
    asker.join(30)
    return answers[0]


def test_once_with_a_path(tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("x")
    with pty() as (master, tty):
        answer = ask(
            tty,
            request(filters=[{"name": "md", "patterns": [["glob", "*.md"]]}]),
            f"o\n{notes}\nn\n",
            master,
        )
        shown = screen(master).replace("\r\n      ", " ")  # lines wrapped at 80 columns
    assert answer.verdict is Verdict.ALLOW and answer.by == "tty"
    assert (answer.lifetime, answer.paths, answer.mode) == (Lifetime.ONCE, (notes,), Mode.READ)
    assert "session s1 (profile notes, image airlock-agent:bookworm) asks to open a file" in shown
    assert "the agent says (untrusted)" in shown
    assert "\x1b[31m" not in shown and "\u202e" not in shown  # escapes are made visible
    assert "filter (from the agent): md: *.md" in shown


def test_minutes_read_write_and_a_relative_path_retried(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2")
    with pty() as (master, tty):
        answer = ask(tty, request(), "15m\nmissing.csv\ndata.csv\ny\n", master, cwd=tmp_path)
        shown = screen(master)
    assert answer.lifetime is Lifetime.UNTIL
    assert answer.until is not None
    assert 890 < answer.until - time.time() <= 900
    assert answer.paths == (tmp_path / "data.csv",)
    assert answer.mode is Mode.READ_WRITE
    assert "no such file or folder; try again" in shown


def test_save_files_into_a_folder(tmp_path: Path) -> None:
    req = request(RequestKind.FILE_SAVE, files=["a.txt", "b.txt"])
    with pty() as (master, tty):
        answer = ask(tty, req, f"s\n{tmp_path}\n", master)
    assert answer.verdict is Verdict.ALLOW
    assert answer.paths == (tmp_path,) and answer.mode is Mode.READ_WRITE


@pytest.mark.parametrize("typed", ["n\n", "\n", "yes please\n", "o\n\n"])
def test_anything_but_a_clear_yes_denies(tmp_path: Path, typed: str) -> None:
    with pty() as (master, tty):
        answer = ask(tty, request(), typed, master)
    assert answer.verdict is Verdict.DENY


def test_silence_times_out_to_a_denial() -> None:
    with pty() as (master, tty):
        answer = ask(tty, request(timeout=0.3), "", master)
        shown = screen(master)
    assert (answer.verdict, answer.by) == (Verdict.DENY, "timeout")
    assert "no answer in time: denied" in shown


def test_keys_typed_before_the_question_do_not_answer_it() -> None:
    # "s⏎" meant for a question that expired: the next one must still be asked.
    with pty() as (master, tty):
        answer = ask(tty, request(RequestKind.NETWORK, timeout=1.5), "", master, ahead="s\n")
    assert (answer.verdict, answer.by) == (Verdict.DENY, "timeout")


def test_no_terminal_is_a_vanished_front_end(tmp_path: Path) -> None:
    broker = ConsentBroker(EventBus(), TerminalPrompt(tmp_path / "no-tty"))
    answer = asyncio.run(broker.ask(request()))
    assert (answer.verdict, answer.by) == (Verdict.DENY, "vanished")


def test_durations() -> None:
    assert parse_duration_choice("a") == (Lifetime.ALWAYS, None)
    assert parse_duration_choice(" Session ")[0] is Lifetime.SESSION
    assert parse_duration_choice("0m") == (None, None)
    assert parse_duration_choice("rm -rf") == (None, None)


def test_the_agents_output_waits_while_a_question_is_on_screen() -> None:
    # Printed after the question, the agent's bytes could rewrite it on the screen.
    with pty() as (master, tty):
        prompt = TerminalPrompt(tty)
        broker = ConsentBroker(EventBus(), prompt)
        answers: list[Answer] = []
        asker = threading.Thread(
            target=lambda: answers.append(asyncio.run(broker.ask(request(RequestKind.NETWORK))))
        )
        asker.start()
        seen = b""
        while b"Allow?" not in seen:
            if select.select([master], [], [], 10)[0]:
                seen += os.read(master, 65536)
        printed: list[str] = []
        agent = threading.Thread(target=lambda: (prompt.gate.wait(), printed.append("out")))
        agent.start()
        agent.join(0.5)
        assert printed == []  # held while the person reads and answers
        os.write(master, b"n\n")
        asker.join(10)
        agent.join(10)
    assert printed == ["out"] and answers[0].verdict is Verdict.DENY


def _columns(fd: int, columns: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


FAKE = "airlock: network access pre-approved (verified)"


@pytest.mark.parametrize("columns", [80, 132])
def test_agent_text_never_starts_a_line_of_its_own(tmp_path: Path, columns: int) -> None:
    # Padded with spaces, the agent's words would wrap onto a fresh line of the terminal and
    # read as Airlock's: wrapped at the terminal's width and indented, they cannot.
    padded = "Open the notes" + " " * 200 + FAKE
    req = ConsentRequest(
        new_request_id(),
        "s1",
        "notes",
        RequestKind.FILE_SAVE,
        "save a file",
        {"current_name": "n" + " " * 150 + FAKE, "files": ["a" * 300]},
        padded,
        10,
    )
    with pty() as (master, tty):
        _columns(master, columns)
        ask(tty, req, "n\n", master)
        shown = screen(master)
    lines = shown.replace("\r\n", "\n").split("\n")
    assert any(FAKE in line for line in lines)  # shown, as the agent's
    for line in lines:
        visible = line.rpartition("\x0f\r")[2]  # after the reset, the line's own text
        assert not visible.startswith("airlock: network"), line
        assert len(visible) <= columns, line  # the terminal wraps nothing itself


def test_the_question_starts_from_a_known_terminal_state() -> None:
    with pty() as (master, tty):
        ask(tty, request(RequestKind.NETWORK), "n\n", master)
        shown = screen(master)
    reset = shown.index("\x1b[0m")
    assert "\x1b[?25h" in shown[: shown.index("airlock: session")]
    assert reset < shown.index("\r\nairlock: session")  # then a fresh line


def test_output_on_the_asking_loop_waits_without_blocking_it(tmp_path: Path) -> None:
    # The supervisor writes the agent's output on the loop the question is asked on: a
    # writer that blocked there would stop the question from ever being answered.
    from ui.commands.run import TerminalOutput

    with pty() as (master, tty):
        prompt = TerminalPrompt(tty)
        output = TerminalOutput(prompt.gate)
        written: list[str] = []
        output._emit = lambda stream, data: written.append(data.decode())  # type: ignore[method-assign]

        async def scenario() -> Answer:
            question = asyncio.ensure_future(prompt.answer(request(RequestKind.NETWORK)))
            while not prompt.gate.held:
                await asyncio.sleep(0.01)
            output.write("stdout", b"after the question")
            drained = asyncio.ensure_future(output.drain())
            await asyncio.sleep(0.3)
            assert written == [] and not drained.done()  # held, and the loop still runs
            os.write(master, b"n\n")
            answer = await question
            await asyncio.wait_for(drained, 5)
            return answer

        answer = asyncio.run(scenario())
    assert answer.verdict is Verdict.DENY and written == ["after the question"]


def test_an_upload_question_says_what_it_carries_and_how_it_starts() -> None:
    request = ConsentRequest(
        id="r-1",
        session="s1",
        profile="p",
        kind=RequestKind.UPLOAD,
        subject="files.test:80",
        details={
            "method": "GET",
            "path": "/search?q=…",
            "size": 70,
            "earlier": 980,
            "threshold": 1024,
            "preview": "GET /search?q=QUtJQ\\x1b[2J",
            "findings": [
                {
                    "kind": "aws-access-key",
                    "offset": 0,
                    "label": "aws-access-key in the query (base64)",
                }
            ],
        },
    )
    text = describe(request, width=200)
    assert "request: GET /search?q=…" in text
    assert "size: 70 bytes, after 980 bytes sent there this session (threshold 1024)" in text
    assert "⚠ it carries: aws-access-key in the query (base64)" in text
    assert "it starts (from the agent): GET /search?q=QUtJQ" in text and "\x1b" not in text
