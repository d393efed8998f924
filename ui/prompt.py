"""The terminal front end (`airlock run --ask tty`): puts each consent request in front of the
person at the terminal and reads the answer, and the files they pick, from /dev/tty.

Like the desktop dialog it says who asks and what for, shows the agent's own words as
untrusted, offers a duration, and treats anything but a clear yes as no. The broker owns the
deadline: when it gives up, this prompt is cancelled and says so on the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import termios
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from app.consent import Answer, ConsentRequest, RequestKind, denied
from app.grants import Lifetime
from app.policy import Choice, user_answer
from app.text import inert, quoted
from ui.terminal import reclaim_fd

MAX_LINE = 4096
ATTEMPTS = 3
CONTINUED = "      "  # how a wrapped line goes on: indented, never at the start of a line

# Anything from the agent, made inert for a terminal (no escape sequences, no bidi marks,
# no invisible characters, no line breaks): the policy of app/text.py.
safe = inert


class TerminalLine:
    """Line reading and writing on a terminal without blocking the loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                time.sleep(0.01)  # a terminal paused with ^S; the text is short
                continue
            data = data[written:]

    def discard_typed_ahead(self) -> None:
        self._buffer = b""
        discard_typed_ahead(self.fd)

    async def read_line(self) -> str:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            try:
                chunk = os.read(self.fd, 1024)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the terminal closed")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise ValueError("an answer longer than a line")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace").strip()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def discard_typed_ahead(fd: int) -> None:
    """Throws away what was typed on terminal `fd` before a question was on screen: a key
    pressed for a question that expired or was withdrawn must not answer the next one,
    which the agent can ask at the moment of its choosing."""
    with contextlib.suppress(termios.error):
        termios.tcflush(fd, termios.TCIFLUSH)


class OutputGate:
    """Holds the agent's output back while a question is on the terminal: printed after it,
    the agent's bytes could rewrite the question the person answers, or push it off the
    screen. A held writer waits (the agent with it, as behind a paused terminal); nothing
    piles up. The writer on the loop (`TerminalOutput`) awaits `opened`; one in a thread
    calls `wait`."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def wait(self) -> None:
        self._open.wait()

    async def opened(self) -> None:
        """Returns once no question is on the terminal (called on the loop that asks)."""
        while self.held:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


class TerminalPrompt:
    """A FrontEnd for the person at the terminal. One question at a time: concurrent
    requests wait their turn (and their deadline keeps running)."""

    def __init__(
        self, tty: Path = Path("/dev/tty"), cwd: Path | None = None, gate: OutputGate | None = None
    ) -> None:
        self._tty = tty
        self._cwd = cwd
        self._turn = asyncio.Lock()
        self.gate = gate or OutputGate()

    async def answer(self, request: ConsentRequest) -> Answer:
        async with self._turn:
            self.gate.hold()
            try:
                with self._terminal() as term:
                    try:
                        return await self._ask(term, request)
                    except asyncio.CancelledError:
                        term.write("\nairlock: no answer in time: denied\n")
                        raise
            finally:
                self.gate.release()

    @contextlib.contextmanager
    def _terminal(self) -> Iterator[TerminalLine]:
        fd = os.open(self._tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            yield TerminalLine(fd)
        finally:
            os.close(fd)

    async def _ask(self, term: TerminalLine, request: ConsentRequest) -> Answer:
        term.discard_typed_ahead()
        # The agent's output came before: put the terminal back in a known state so that
        # nothing it printed (conceal, colours, a moved cursor) hides or rewrites the question.
        reclaim_fd(term.fd)
        term.write(describe(request, _width(term.fd)))
        seconds = max(0, round(request.deadline - time.time()))
        term.write(
            "Allow? [o]nce, [s]ession, [N]m for N minutes, [a]lways for this profile;\n"
            f"anything else denies ({seconds} s): "
        )
        lifetime, until = parse_duration_choice(await term.read_line())
        if lifetime is None:
            term.write("airlock: denied\n")
            return denied("tty")
        paths: tuple[Path, ...] = ()
        writable = False
        if request.kind is RequestKind.FILE_OPEN:
            paths = await self._pick(term, request, existing=True)
            if paths and all(p.is_file() for p in paths):
                term.write("Let the agent change them (staged for your review)? [y/N]: ")
                writable = (await term.read_line()).lower() in ("y", "yes")
        elif request.kind is RequestKind.FILE_SAVE:
            paths = await self._pick(term, request, existing=False)
        answer = user_answer(request.kind, Choice(lifetime, until, paths, writable), "tty")
        if not answer.allowed:
            term.write("airlock: nothing picked: denied\n")
        return answer

    async def _pick(
        self, term: TerminalLine, request: ConsentRequest, existing: bool
    ) -> tuple[Path, ...]:
        details = request.details
        many = bool(details.get("multiple")) and existing
        files = details.get("files") or []
        if not existing and files:
            question = f"Folder to save the {len(files)} files into: "
        elif not existing:
            question = "Save to which file (full path)? "
        else:
            question = "Path to give" + (" (one per line, empty line ends): " if many else ": ")
        picked: list[Path] = []
        attempts = 0
        term.write(question)
        while attempts < ATTEMPTS:
            line = await term.read_line()
            if not line:
                break
            path, problem = self._check(
                line, existing=existing, folder=bool(files) and not existing
            )
            if problem:
                attempts += 1
                term.write(f"airlock: {problem}; try again: ")
                continue
            assert path is not None
            picked.append(path)
            if not many:
                break
            term.write("Another (empty line ends): ")
        return tuple(picked)

    def _check(self, text: str, existing: bool, folder: bool) -> tuple[Path | None, str]:
        path = Path(os.path.expanduser(text))
        if not path.is_absolute():
            path = (self._cwd or Path.cwd()) / path
        path = Path(os.path.normpath(path))
        if existing and not path.exists():
            return None, f"{safe(path)}: no such file or folder"
        if folder and not path.is_dir():
            return None, f"{safe(path)}: not a folder"
        if not existing and not folder and not path.parent.is_dir():
            return None, f"{safe(path.parent)}: no such folder"
        return path, ""


def parse_duration_choice(text: str) -> tuple[Lifetime | None, float | None]:
    """`o`, `s`, `a`, or `15m` (minutes); anything else is no."""
    choice = text.strip().lower()
    if choice in ("o", "once"):
        return Lifetime.ONCE, None
    if choice in ("s", "session"):
        return Lifetime.SESSION, None
    if choice in ("a", "always"):
        return Lifetime.ALWAYS, None
    minutes = re.fullmatch(r"(\d{1,5})\s*m(in(utes?)?)?", choice)
    if minutes and int(minutes.group(1)) > 0:
        return Lifetime.UNTIL, time.time() + 60 * int(minutes.group(1))
    return None, None


def _width(fd: int) -> int:
    """Columns to wrap at: the terminal's, so that it never wraps a line itself (its
    continuation would start a line of its own)."""
    try:
        columns = os.get_terminal_size(fd).columns
    except OSError:
        columns = 0
    return max(20, (columns or 80) - 1)  # a terminal that does not say its size: 0


def upload_lines(details: Mapping[str, Any]) -> list[str]:
    """What an upload (a body, or the data a request's head or host name carries) is: the
    request, its size against the threshold, what inspection found, its first bytes."""
    lines = []
    if details.get("path") or details.get("method"):
        lines.append(
            f"  request: {safe(details.get('method', ''))} {safe(details.get('path', ''))}"
        )
    size = f"  size: {details.get('size')} bytes"
    if details.get("earlier"):
        size += f", after {details['earlier']} bytes sent there this session"
    if details.get("threshold"):
        size += f" (threshold {details['threshold']})"
    lines.append(size)
    for finding in (details.get("findings") or [])[:10]:
        if isinstance(finding, Mapping):
            lines.append(f"  ⚠ it carries: {safe(finding.get('label', '?'))}")
    if details.get("preview"):
        lines.append(f"  it starts (from the agent): {safe(str(details['preview'])[:200])}")
    return lines


def describe(request: ConsentRequest, width: int = 79) -> str:
    """Who asks and what for; everything from the agent is marked and escaped, and wrapped
    so that no visual line of it starts at the left edge, where Airlock's own lines do."""
    details = request.details
    who = f"session {safe(request.session)} (profile {safe(request.profile)}"
    if details.get("image"):
        who += f", image {safe(details['image'])}"
    lines = [f"airlock: {who}) asks to {safe(request.subject)}"]
    if request.reason:
        lines.append(
            "  the agent says (untrusted):\n" + quoted(f'"{request.reason}"', CONTINUED, width)
        )
    for f in details.get("filters") or []:
        patterns = ", ".join(safe(p[1]) for p in f.get("patterns", []))
        lines.append(f"  filter (from the agent): {safe(f.get('name'))}: {patterns}")
    for key, label in (
        ("current_folder", "suggested folder"),
        ("current_name", "suggested name"),
        ("current_file", "current file"),
    ):
        if details.get(key):
            lines.append(f"  {label} (from the agent): {safe(details[key])}")
    if details.get("files"):
        lines.append("  files (from the agent): " + ", ".join(safe(n) for n in details["files"]))
    if details.get("directory"):
        lines.append("  it wants a folder")
    if request.kind is RequestKind.UPLOAD:
        lines += upload_lines(details)
    wrapped = []
    for line in lines:
        if line.startswith("  the agent says"):
            wrapped.append(line)  # quoted above
            continue
        wrapped += textwrap.wrap(
            line, width, subsequent_indent=CONTINUED, break_on_hyphens=False
        ) or [""]
    return "\n".join(wrapped) + "\n"
