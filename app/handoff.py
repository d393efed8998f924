"""Hand-off: a running supervisor (the desktop app, or `airlock daemon`) takes `airlock run`
requests over a unix socket, so the command line starts agents without loading the core.

The socket lives in the user's runtime directory (0700) and every peer's uid is checked with
SO_PEERCRED. Framing is binary and tiny, so the client needs nothing but the standard
library: the request is one JSON line; each frame after it, both ways, is one type byte, a
4-byte big-endian length and the payload. From the supervisor:
    S       the session's id, before anything else of it
    O / E   the agent's stdout / stderr bytes
    N       a notice line for the terminal (UTF-8)
    X       the end: JSON {"exit": code, "session": id, "rule": commit rule,
            "denied": [[kind, subject, who], ...] the questions denied meanwhile}
    R       a refusal: JSON {"error": message, "exit": code}
From the client, when its request has a "terminal" (app/console.py's Terminal as JSON):
    I       keystrokes or piped input for the agent
    D       the end of that input
    W       the terminal's new size: two big-endian 16-bit numbers, rows and columns
    K       stop the session (Airlock's menu on the client's terminal)
Closing the connection (Ctrl-C in the client, the client killed) stops the session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.consent import DenyAll
from app.console import Console, Terminal
from app.endings import request_stop
from app.errors import AirlockError
from app.events import Event, EventKind
from app.grants import parse_grant_argument
from app.profiles import parse_duration
from app.questions import QuestionQueue, SessionRoutes
from app.sessions import LaunchRequest, Supervisor

log = logging.getLogger(__name__)

HEADER = struct.Struct(">cI")
REQUEST_SECONDS = 10.0  # from connecting to the request's end of line
MAX_WAITING = 32  # connections whose request has not come yet; more are turned away
MAX_FRAME = 1024 * 1024  # from the client: keystrokes, piped input in pieces
PROGRESS_AFTER = 2.0  # seconds a launch may take before the client hears how far it got

Notice = Callable[[Event], str | None]
CANNOT_ASK = 75  # the client then supervises the session itself, with its terminal prompt


class CannotAsk(AirlockError):
    exit_code = CANNOT_ASK


class HandoffServer:
    def __init__(
        self,
        supervisor: Supervisor,
        path: Path,
        notice: Notice,
        interactive: bool = False,
        questions: QuestionQueue | None = None,
        routes: SessionRoutes | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.path = path
        # Can it put questions to the user: the desktop app (its dialogs), or a headless
        # supervisor whose questions wait for `airlock ask` (`questions`, routed per session
        # by `routes`, the broker's front end).
        self.interactive = interactive or questions is not None
        self.questions = questions
        self.routes = routes
        self.last_activity = time.monotonic()  # a session or a client: not idle
        self._notice = notice
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting = 0  # connections still to send their request

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        if self.path.exists():
            if await _answers(self.path):
                raise AirlockError(f"another Airlock supervisor already serves {self.path}")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self.path.exists():
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("hand-off request failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = _peer_uid(sock) if sock is not None else None
        if uid != os.getuid():
            await _frame(writer, b"R", _json({"error": "not your supervisor", "exit": 2}))
            return
        # Idle connections would hold a descriptor each for good, until the supervisor ran
        # out of them and could serve no one, its running sessions included.
        if self._waiting >= MAX_WAITING:
            await _frame(writer, b"R", _json({"error": "too many requests at once", "exit": 2}))
            return
        self._waiting += 1
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                line = await reader.readuntil(b"\n")  # at most the stream's limit, 64 KiB
        except asyncio.LimitOverrunError:
            await _frame(writer, b"R", _json({"error": "request too large", "exit": 2}))
            return
        except TimeoutError:
            await _frame(
                writer,
                b"R",
                _json({"error": f"no request within {REQUEST_SECONDS:.0f} s", "exit": 2}),
            )
            return
        finally:
            self._waiting -= 1
        try:
            data = json.loads(line)
            request = self._request(data)
        except (AirlockError, ValueError, KeyError, TypeError) as e:
            code = e.exit_code if isinstance(e, AirlockError) else 2
            await _frame(writer, b"R", _json({"error": str(e), "exit": code}))
            return
        await self._run(request, reader, writer, asks=data.get("ask") == "tty")

    def _request(self, data: object) -> LaunchRequest:
        """Validates the client's request exactly as `airlock run` validates its arguments."""
        if not isinstance(data, dict):
            raise ValueError("a request is a JSON object")
        if data.get("op") != "run":
            raise ValueError(f"unknown operation {data.get('op')!r}")
        if data.get("ask") == "tty" and not self.interactive:
            raise CannotAsk("this supervisor has no one to put questions to")
        cwd = Path(str(data["cwd"]))
        if not cwd.is_absolute():
            raise ValueError("cwd must be absolute")
        reference = str(data["profile"])
        if "/" in reference and not reference.startswith("/"):
            reference = str(cwd / reference)
        catalog = self.supervisor.catalog
        profile_path = catalog.find(reference)
        profile = catalog.load(reference)
        named = data.get("grants", [])
        if not (isinstance(named, list) and all(isinstance(g, str) for g in named)):
            raise ValueError("grants must be a list of strings")
        grants = tuple(parse_grant_argument(g, cwd) for g in named)
        command = data.get("command")
        if command is not None and not (
            isinstance(command, list) and all(isinstance(c, str) for c in command)
        ):
            raise ValueError("command must be a list of strings")
        timeout = data.get("timeout")
        seconds = parse_duration(timeout) if timeout else None
        return LaunchRequest(
            profile,
            profile_path,
            grants,
            tuple(command) if command else None,
            seconds,
            _terminal(data.get("terminal")),
        )

    @property
    def busy(self) -> bool:
        """Whether a client is connected (and so, whether a handed-off session runs)."""
        return bool(self._tasks)

    async def _run(
        self,
        request: LaunchRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        asks: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        session_ids: set[str] = set()

        denied: list[list[str]] = []  # (kind, subject, by) of each question denied
        owns_screen = request.terminal is not None and request.terminal.tty

        def forward(event: Event) -> None:
            if event.session in session_ids:  # this client's session: not another one's
                if (
                    event.kind is EventKind.REQUEST_ANSWERED
                    and event.details.get("verdict") == "deny"
                ):
                    denied.append(
                        [
                            str(event.details.get("asks", "")),
                            event.subject,
                            str(event.details.get("by", "")),
                        ]
                    )
                text = self._notice(event)
                # On a terminal the agent owns, notices wait for its end, after which the
                # summary of denials (the end frame's "denied") says those.
                if text and not (
                    owns_screen
                    and event.kind is EventKind.REQUEST_ANSWERED
                    and event.details.get("verdict") == "deny"
                ):
                    writer.write(HEADER.pack(b"N", len(text.encode())) + text.encode())

        console: asyncio.Future[Console] = loop.create_future()

        class Output:
            def write(self, stream: str, data: bytes) -> None:
                writer.write(HEADER.pack(b"O" if stream == "stdout" else b"E", len(data)) + data)

            async def drain(self) -> None:
                # The agent's output is read no faster than the client takes it: one that
                # prints more than a slow terminal shows waits, as it would on the terminal.
                await writer.drain()

            def attached(self, attached: Console) -> None:
                if not console.done():
                    console.set_result(attached)

        def named(session: str) -> None:
            session_ids.add(session)
            if self.routes is not None:
                self.routes.route(session, self.questions if asks and self.questions else DenyAll())
            writer.write(HEADER.pack(b"S", len(session.encode())) + session.encode())

        # A launch that takes a while says how far it got (the engine may be busy): once after
        # a moment, and again when the step changes, never for a start that is quick.
        started, told = time.monotonic(), [""]
        steps: list[str] = []

        def progress(step: str) -> None:
            steps.append(step)
            tell()

        def tell() -> None:
            if not steps or steps[-1] == told[0] or time.monotonic() - started < PROGRESS_AFTER:
                return
            told[0] = steps[-1]
            text = f"airlock: still starting the agent: {steps[-1]}…"
            writer.write(HEADER.pack(b"N", len(text.encode())) + text.encode())

        def running(event: Event) -> None:
            if event.kind is EventKind.SESSION_STARTED and event.session in session_ids:
                steps.clear()

        self.supervisor.bus.attach(forward)
        self.supervisor.bus.attach(running)
        run = loop.create_task(
            self.supervisor.run(request, Output(), named=named, progress=progress)
        )
        nudge = loop.call_later(PROGRESS_AFTER, tell)
        # Ends at EOF: the client left (Ctrl-C, killed), whatever the session is doing.
        gone = loop.create_task(self._client_frames(reader, console, session_ids))
        try:
            done, _ = await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
            if run not in done:
                for session in session_ids:
                    request_stop(
                        self.supervisor.dirs.sessions,
                        session,
                        "interrupted: `airlock run` was interrupted or killed",
                    )
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                return
            try:
                result = run.result()
            except AirlockError as e:
                await _frame(writer, b"R", _json({"error": str(e), "exit": e.exit_code}))
                return
            await _frame(
                writer,
                b"X",
                _json(
                    {
                        "exit": result.exit_code,
                        "denied": denied,
                        "session": result.session,
                        "rule": request.profile.approval.commit,
                    }
                ),
            )
        finally:
            nudge.cancel()
            gone.cancel()
            self.supervisor.bus.detach(running)
            self.supervisor.bus.detach(forward)
            for session in session_ids:
                if self.routes is not None:
                    self.routes.forget(session)
            self.last_activity = time.monotonic()

    async def _client_frames(
        self, reader: asyncio.StreamReader, console: asyncio.Future[Console], sessions: set[str]
    ) -> None:
        """Reads the client's frames until it leaves (or breaks the framing, which is the
        same): a stop at once, keystrokes, end of input and resizes handed to `_feed` in
        order. The reading itself never waits for the agent, so a client that leaves while
        its session is still starting is seen leaving, and its launch is cancelled."""
        frames: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        feeding = asyncio.get_running_loop().create_task(self._feed(frames, console))
        stops: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    header = await reader.readexactly(HEADER.size)
                    kind, size = HEADER.unpack(header)
                    if size > MAX_FRAME:
                        return
                    payload = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if kind == b"K":
                    for session in sessions:
                        stop = asyncio.get_running_loop().create_task(
                            self.supervisor.astop(
                                session, "stopped from the terminal's Airlock menu"
                            )
                        )
                        stops.add(stop)
                        stop.add_done_callback(stops.discard)
                else:
                    frames.put_nowait((kind, payload))
        finally:
            feeding.cancel()

    async def _feed(
        self, frames: asyncio.Queue[tuple[bytes, bytes]], console: asyncio.Future[Console]
    ) -> None:
        """Applies the client's input frames to the agent's console in order, in a thread of
        this connection's own: an agent that does not read its stdin holds up this client's
        keystrokes, and no one else's."""
        target = await console  # input before the agent runs waits for it
        loop = asyncio.get_running_loop()
        lane = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="handoff-input")
        try:
            while True:
                kind, payload = await frames.get()
                if kind == b"I":
                    await loop.run_in_executor(lane, target.write, payload)
                elif kind == b"D":
                    await loop.run_in_executor(lane, target.close_stdin)
                elif kind == b"W" and len(payload) == 4:
                    rows, cols = struct.unpack(">HH", payload)
                    await loop.run_in_executor(lane, target.resize, rows, cols)
        finally:
            lane.shutdown(wait=False, cancel_futures=True)


def _terminal(data: object) -> Terminal | None:
    """The client's terminal, checked: a client that sends none gets no stdin (older ones)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("terminal must be a JSON object")
    rows, cols = data.get("rows", 24), data.get("cols", 80)
    if not all(isinstance(n, int) and 0 < n < 65536 for n in (rows, cols)):
        raise ValueError("terminal rows and cols must be numbers of 1 to 65535")
    return Terminal(
        bool(data.get("tty")), rows, cols, str(data.get("term", "")), str(data.get("colorterm", ""))
    )


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


async def _frame(writer: asyncio.StreamWriter, kind: bytes, payload: bytes) -> None:
    writer.write(HEADER.pack(kind, len(payload)) + payload)
    await writer.drain()


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _, uid, _ = struct.unpack("3i", credentials)
    return int(uid)


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    writer.close()
    return True
