"""An agent session that owns the terminal of `airlock run`: keystrokes, resizes and the end
of input go to the agent's console (app/console.py); its output comes back untouched; the
escape key opens Airlock's own menu, with the agent's output held while it is on screen.

Questions never share this terminal: they wait in a QuestionQueue for `airlock ask` (another
terminal) or for the menu, and nobody's keystroke meant for the agent answers one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.consent import ConsentRequest
from app.console import Console
from app.questions import QuestionQueue
from app.sessions import DrainingOutput
from ui.rawmode import ESCAPE_KEY, ESCAPE_NAME, RawTerminal, split_at_escape, window_size
from ui.terminal import reclaim

if TYPE_CHECKING:
    from app.events import Event
    from app.sessions import LaunchRequest, Output, Supervisor
    from ui.question_notices import QuestionNotifier

_MENU = (
    f"\r\n\x1b[0m\x1b[?25hairlock menu ({ESCAPE_NAME}): [s] stop the session   "
    "[a] answer questions ({n} waiting)   [g] show grants   "
    f"[k] send {ESCAPE_NAME} to the agent   [r] return to the agent\r\n"
)


@dataclass(frozen=True, slots=True)
class MenuActions:
    """What the menu can do to the session, supplied by whoever runs it."""

    stop: Callable[[], Awaitable[None]]
    grants: Callable[[], list[str]]
    answer: Callable[[ConsentRequest], Awaitable[None]]  # puts one question to the user


class AgentTerminal:
    """The Output (app.sessions) of an interactive session, and its ConsoleOutput: the
    agent's bytes go to this process's stdout (stderr too, without a terminal), and this
    process's stdin goes to the agent."""

    def __init__(
        self,
        questions: QuestionQueue | None,
        raw: RawTerminal | None,
        tty: bool,
        escape: int | None = ESCAPE_KEY,
        streams: Output | None = None,
    ) -> None:
        self.questions = questions
        # Plain streams (no terminal for the agent) go through the command line's own output;
        # a terminal's bytes go to the screen untouched: the agent owns it.
        self.streams = None if tty else streams
        self.raw = raw  # None: stdin is not a terminal (a pipe, a file)
        self.tty = tty
        self.escape = escape if raw is not None else None
        self.actions: MenuActions | None = None
        self.console: Console | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._held: list[tuple[str, bytes]] = []
        self._input: queue.Queue[bytes | None] = queue.Queue()
        self._stop_r, self._stop_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._menu: asyncio.Task[None] | None = None

    # the agent's output

    def write(self, stream: str, data: bytes) -> None:
        if not self._open.is_set():
            self._held.append((stream, data))
            return
        if self.streams is not None:
            self.streams.write(stream, data)
            return
        _write_all(
            sys.stdout.fileno() if stream == "stdout" or self.tty else sys.stderr.fileno(), data
        )

    async def drain(self) -> None:
        """The agent is read no faster than the terminal shows it, and not at all while
        Airlock's menu is on screen: its bytes could rewrite the menu."""
        await self._open.wait()
        held, self._held = self._held, []
        for stream, data in held:
            self.write(stream, data)
        if isinstance(self.streams, DrainingOutput):  # held behind a question on /dev/tty
            await self.streams.drain()

    # the agent's input

    def attached(self, console: Console) -> None:
        self.console = console
        self._loop = asyncio.get_running_loop()
        writer = threading.Thread(target=self._feed, name="agent-stdin", daemon=True)
        writer.start()
        self._threads.append(writer)
        if self.raw is not None:
            self._loop.add_reader(self.raw.fd, self._on_keys)
            self._loop.add_signal_handler(signal.SIGWINCH, self._on_resize)
            # A resize before this handler was in place went unheard (the agent may already
            # draw at the size it started with): the size the terminal has now. At the same
            # size the kernel sends the agent no SIGWINCH, so this costs it nothing.
            self._on_resize()
        else:
            reader = threading.Thread(target=self._read_stdin, name="stdin", daemon=True)
            reader.start()
            self._threads.append(reader)

    def _feed(self) -> None:
        """Writes what the user types to the agent, in order, off the loop: a write blocks
        while the agent does not read."""
        while (data := self._input.get()) is not None:
            assert self.console is not None
            if data == b"":
                self.console.close_stdin()
                return
            self.console.write(data)

    def _read_stdin(self) -> None:
        """Stdin that is not a terminal (a pipe, a file): copied to the agent to its end."""
        fd = sys.stdin.fileno()
        last = b"\n"
        while True:
            ready, _, _ = select.select([fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data and self.tty:
                # A terminal has no end of input of its own: its end-of-file key says it
                # (twice after a partial line, which the first one only sends).
                self._input.put(b"\x04" if last.endswith(b"\n") else b"\x04\x04")
            self._input.put(data)
            if not data:
                return
            last = data

    def _on_keys(self) -> None:
        assert self.raw is not None
        try:
            data = os.read(self.raw.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the terminal hung up
            self._pause_keys()
            self._input.put(b"")
            return
        before, escaped, _ = split_at_escape(data, self.escape)
        if before:
            self._input.put(before)
        if escaped and self._loop is not None and self._menu is None:
            self._pause_keys()
            self._menu = self._loop.create_task(self._run_menu())

    def _pause_keys(self) -> None:
        if self.raw is not None and self._loop is not None:
            self._loop.remove_reader(self.raw.fd)

    def _on_resize(self) -> None:
        if self.raw is None or self.console is None:
            return
        rows, cols = window_size(self.raw.fd)
        console = self.console
        if self._loop is not None:
            self._loop.run_in_executor(None, console.resize, rows, cols)

    # Airlock's menu

    async def _run_menu(self) -> None:
        assert self.raw is not None
        self._open.clear()
        try:
            with self.raw.cooked():
                await self._menu_loop()
        finally:
            self._open.set()
            self._menu = None
            if self._loop is not None and self.console is not None:
                self._loop.add_reader(self.raw.fd, self._on_keys)
                await self._redraw()

    async def _menu_loop(self) -> None:
        assert self.raw is not None
        while True:
            waiting = len(self.questions.pending()) if self.questions is not None else 0
            _write_all(self.raw.fd, _MENU.replace("{n}", str(waiting)).encode())
            choice = (await _read_line(self.raw.fd)).strip().lower()
            if choice in ("", "r"):
                return
            if choice == "k" and self.escape is not None:
                self._input.put(bytes([self.escape]))
                return
            if self.actions is None:
                continue
            if choice == "s":
                _write_all(self.raw.fd, b"airlock: stopping the session\r\n")
                await self.actions.stop()
                return
            if choice == "g":
                lines = self.actions.grants() or ["no grants"]
                _write_all(self.raw.fd, ("\n".join(lines) + "\n").encode())
            if choice == "a":
                pending = self.questions.pending() if self.questions is not None else []
                if not pending:
                    _write_all(self.raw.fd, b"airlock: no questions waiting\n")
                for request in pending:
                    await self.actions.answer(request)

    async def _redraw(self) -> None:
        """The agent's screen back: a size change makes a full-screen program redraw it."""
        assert self.raw is not None and self.console is not None
        rows, cols = window_size(self.raw.fd)
        await asyncio.to_thread(self.console.resize, rows, max(1, cols - 1))
        await asyncio.to_thread(self.console.resize, rows, cols)

    def close(self) -> None:
        """The session ended: stop reading input."""
        os.write(self._stop_w, b"x")
        self._input.put(None)
        if self._loop is not None and self.raw is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self.raw.fd)
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_signal_handler(signal.SIGWINCH)
        if self._menu is not None:
            self._menu.cancel()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        data = data[written:]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _read_line(fd: int) -> str:
    """One line from the terminal (cooked mode), without blocking the loop."""
    loop = asyncio.get_running_loop()
    line = b""
    while not line.endswith(b"\n"):
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 1024)
        except BlockingIOError:
            continue
        if not chunk:
            break
        line += chunk
    return line.decode("utf-8", "replace")


def denial_summary(events: list[tuple[str, str, str]]) -> str | None:
    """One line on what was denied while the agent had the terminal: (kind, subject, by)."""
    if not events:
        return None
    from app.text import inert

    why = {
        "timeout": "no answer in time",
        "no front end": "nobody to ask",
        "deny-all": "--ask deny",
        "cancelled": "withdrawn",
    }
    parts = [
        f"{kind} {inert(subject)!s} ({why.get(by, 'denied by ' + by)})"
        for kind, subject, by in events[:5]
    ]
    more = f" and {len(events) - 5} more" if len(events) > 5 else ""
    return f"denied while the agent ran: {'; '.join(parts)}{more} (see `airlock audit show`)"


def run_interactive(
    supervisor: Supervisor,
    request: LaunchRequest,
    tty: bool,
    questions: QuestionQueue | None,
    notice: Callable[[Event], str | None],
    streams: Output | None = None,
) -> int:
    """Runs one session with the agent on this process's terminal (or stdin), to its end.
    While the agent owns the screen, Airlock's notices wait: they are printed after it."""
    from app.events import EventKind
    from ui.notices import summed_up
    from ui.prompt import TerminalPrompt

    denied: list[tuple[str, str, str]] = []
    started: list[str] = []
    notices: list[str] = []
    screen_owned = tty and os.isatty(sys.stdout.fileno())

    def say(text: str) -> None:
        """Airlock's own line, from a known state of the terminal (ui/terminal.py)."""
        speaker = getattr(streams, "say", None)
        if callable(speaker):
            speaker(text)
            return
        sys.stdout.flush()
        reclaim(sys.stderr)
        print(f"airlock: {text}", file=sys.stderr, flush=True)

    def watch(event: Event) -> None:
        text = notice(event)
        if text and screen_owned:
            if not summed_up(event):  # the summary of denials after the session says it
                notices.append(text)
        elif text:
            say(text)
        if event.kind is EventKind.SESSION_STARTED and not started:
            started.append(str(event.session))
        if (
            event.kind is EventKind.REQUEST_ANSWERED
            and event.session in started
            and event.details.get("verdict") == "deny"
        ):
            denied.append(
                (
                    str(event.details.get("asks", "")),
                    event.subject,
                    str(event.details.get("by", "")),
                )
            )

    async def session(output: AgentTerminal) -> int:
        from app.questions import AskServer, ask_socket

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        server = (
            AskServer(questions, ask_socket(supervisor.dirs.runtime))
            if questions is not None
            else None
        )
        if server is not None:
            await server.start()
        notifier = await notify_questions(questions)

        async def stop() -> None:
            if supervisor.last_session is not None:
                await asyncio.to_thread(
                    supervisor.stop,
                    supervisor.last_session,
                    "stopped from the terminal's Airlock menu",
                )

        def grants() -> list[str]:
            session_id = supervisor.last_session or ""
            return [
                f"  {g.id}  {g.mode}  {g.path}"
                for g in supervisor.store.session_grants(session_id, time.time())
            ]

        async def answer(request: ConsentRequest) -> None:
            assert questions is not None
            given = await TerminalPrompt().answer(request)
            if not questions.resolve(request.id, given):
                print(
                    "airlock: that question is no longer waiting (answered elsewhere or timed out)",
                    file=sys.stderr,
                    flush=True,
                )

        output.actions = MenuActions(stop, grants, answer)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, task.cancel)
        try:
            result = await supervisor.run(request, output)
        except asyncio.CancelledError:
            if output.raw is not None:
                output.raw.restore()
            say("interrupted; the session was stopped and removed")
            return 130
        finally:
            output.close()
            if server is not None:
                await server.close()
            if notifier is not None:
                notifier.disconnect()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(signum)
        return result.exit_code

    supervisor.bus.attach(watch)
    if screen_owned:
        asks = " (questions: `airlock ask` in another terminal, or the menu)" if questions else ""
        print(
            f"airlock: the agent has this terminal; {ESCAPE_NAME} opens Airlock's menu{asks}",
            file=sys.stderr,
            flush=True,
        )
    try:
        fd = sys.stdin.fileno()
        raw = RawTerminal(fd) if tty and os.isatty(fd) else None
        with raw or contextlib.nullcontext():
            output = AgentTerminal(questions, raw, tty, streams=streams)
            code = asyncio.run(session(output))
    finally:
        supervisor.bus.detach(watch)
    # After the agent had the screen, each line starts from a known state (what a killed
    # full-screen agent left: the alternate screen, a hidden cursor, colours).
    summary = denial_summary(denied)
    for text in [*notices, *([summary] if summary else [])]:
        say(text)
    return code


async def notify_questions(questions: QuestionQueue | None) -> QuestionNotifier | None:
    """Desktop notifications for the waiting questions, when the session bus has a
    notification server (dbus-fast is imported only then)."""
    if questions is None or not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return None
    from ui.question_notices import QuestionNotifier

    return await QuestionNotifier.connect(questions)
