"""Questions that wait to be fetched: the front end of a session whose terminal belongs to
the agent. Nothing is printed to that terminal and nothing typed there answers; the user
answers from another terminal (`airlock ask`, through `AskServer`) or from Airlock's own
escape menu. The broker's deadline still holds: a question nobody fetches is denied.

The server is a unix socket per supervisor in the user's runtime directory (0700), every
peer's uid checked (SO_PEERCRED), one JSON object a line each way:
    {"op": "list"}                               -> {"requests": [request, ...]}
    {"op": "answer", "id": ID, "answer": {...}}  -> {"ok": true} or {"error": message}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.consent import Answer, ConsentRequest, FrontEnd, RequestKind, Verdict
from app.grants import Lifetime, Mode

log = logging.getLogger(__name__)

MAX_LINE = 256 * 1024
LINE_SECONDS = 30.0  # a client that says nothing for this long is let go


class QuestionQueue:
    """A FrontEnd whose questions wait until someone fetches and answers them."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[ConsentRequest, asyncio.Future[Answer]]] = {}
        self._listeners: list[Callable[[int], None]] = []

    def on_change(self, listener: Callable[[int], None]) -> None:
        """`listener(number of questions waiting)` after each question comes or goes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener(len(self._waiting))
            except Exception:
                log.exception("question listener failed")

    async def answer(self, request: ConsentRequest) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = (request, future)
        self._changed()
        try:
            return await future  # the broker cancels it at the deadline: denied
        finally:
            if self._waiting.pop(request.id, None) is not None:
                self._changed()

    def pending(self) -> list[ConsentRequest]:
        return [request for request, _ in self._waiting.values()]

    def resolve(self, request_id: str, answer: Answer) -> bool:
        """Answers a waiting question; False if it is no longer waiting (answered, expired)."""
        entry = self._waiting.get(request_id)
        if entry is None or entry[1].done():
            return False
        entry[1].set_result(answer)
        del self._waiting[request_id]  # answered now, not when its asker next runs
        self._changed()
        return True


class SessionRoutes:
    """A FrontEnd that puts each session's questions where its `airlock run` asked for
    them: a headless supervisor serves clients that want `airlock ask` and clients that
    want every question denied (`--ask deny`, scripts) at once."""

    def __init__(self, default: FrontEnd) -> None:
        self._default = default
        self._routes: dict[str, FrontEnd] = {}

    def route(self, session: str, front_end: FrontEnd) -> None:
        self._routes[session] = front_end

    def forget(self, session: str) -> None:
        self._routes.pop(session, None)

    async def answer(self, request: ConsentRequest) -> Answer:
        return await self._routes.get(request.session, self._default).answer(request)


def request_to_json(request: ConsentRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "session": request.session,
        "profile": request.profile,
        "kind": str(request.kind),
        "subject": request.subject,
        "details": dict(request.details),
        "reason": request.reason,
        "timeout": request.timeout,
        "created_at": request.created_at,
    }


def request_from_json(data: dict[str, Any]) -> ConsentRequest:
    return ConsentRequest(
        id=str(data["id"]),
        session=str(data["session"]),
        profile=str(data["profile"]),
        kind=RequestKind(data["kind"]),
        subject=str(data["subject"]),
        details=dict(data.get("details") or {}),
        reason=str(data.get("reason", "")),
        timeout=float(data["timeout"]),
        created_at=float(data["created_at"]),
    )


def answer_to_json(answer: Answer) -> dict[str, Any]:
    return {
        "verdict": str(answer.verdict),
        "lifetime": str(answer.lifetime),
        "until": answer.until,
        "paths": [str(p) for p in answer.paths],
        "mode": str(answer.mode),
        "by": answer.by,
    }


def answer_from_json(data: object, by: str) -> Answer:
    """An answer from a client, checked as untrusted input would be (it is the user's own
    process, but a malformed one must get a refusal, not a grant of something odd)."""
    if not isinstance(data, dict):
        raise ValueError("an answer is a JSON object")
    verdict = Verdict(str(data.get("verdict")))
    lifetime = Lifetime(data.get("lifetime", "once"))
    until = data.get("until")
    if until is not None:
        if not isinstance(until, int | float) or not time.time() < until < 2**40:
            raise ValueError("until must be a time in the future")
        until = float(until)
    if lifetime is Lifetime.UNTIL and until is None:
        raise ValueError("an answer until a time needs the time")
    paths = data.get("paths", [])
    if not (
        isinstance(paths, list)
        and all(isinstance(p, str) and p.startswith("/") and "\0" not in p for p in paths)
    ):
        raise ValueError("paths must be a list of absolute paths")
    mode = Mode(data.get("mode", "ro"))
    if verdict is Verdict.DENY:
        return Answer(Verdict.DENY, by=by)
    return Answer(verdict, lifetime, until, tuple(Path(p) for p in paths), mode, by=by)


class AskServer:
    """Serves a QuestionQueue to `airlock ask` over a unix socket."""

    def __init__(self, queue: QuestionQueue, path: Path) -> None:
        self.queue = queue
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if sock is None or _peer_uid(sock) != os.getuid():
                await _reply(writer, {"error": "not your supervisor"})
                return
            while True:
                async with asyncio.timeout(LINE_SECONDS):
                    line = await reader.readline()
                if not line:
                    return
                await _reply(writer, self._handle(line))
        except (ConnectionError, TimeoutError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("a request is a JSON object")
            if message.get("op") == "list":
                return {"requests": [request_to_json(r) for r in self.queue.pending()]}
            if message.get("op") == "answer":
                answer = answer_from_json(message.get("answer"), by="airlock ask")
                if not self.queue.resolve(str(message.get("id")), answer):
                    return {"error": "that question is no longer waiting (answered or timed out)"}
                return {"ok": True}
            raise ValueError(f"unknown operation {message.get('op')!r}")
        except (ValueError, KeyError, TypeError) as e:
            return {"error": str(e)}


async def _reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", credentials)[1])


def ask_socket(runtime: Path, pid: int | None = None) -> Path:
    """Where the supervisor of process `pid` serves its questions."""
    return runtime / "ask" / f"{os.getpid() if pid is None else pid}.sock"
