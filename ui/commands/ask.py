"""`airlock ask`: answer, from another terminal, the questions of sessions whose agent owns
the terminal they run on (see app/questions.py). Same information as the dialog."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from app.errors import AirlockError
from ui.commands.base import Context, add_command

REPLY_SECONDS = 10.0


class _Supervisor:
    """One supervisor's question socket, one JSON line each way."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(REPLY_SECONDS)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rb")

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        line = self._file.readline()
        if not line:
            raise ConnectionError("the supervisor went away")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ConnectionError("a reply that is not a JSON object")
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _supervisors(runtime: Path) -> list[_Supervisor]:
    found = []
    for path in sorted((runtime / "ask").glob("*.sock")):
        try:
            found.append(_Supervisor(path))
        except ConnectionRefusedError:  # its supervisor is gone without closing it
            with contextlib.suppress(OSError):
                path.unlink()
        except OSError:
            continue
    return found


def _pending(supervisors: list[_Supervisor]) -> list[tuple[_Supervisor, dict[str, Any]]]:
    waiting = []
    for supervisor in supervisors:
        try:
            reply = supervisor.call({"op": "list"})
        except (OSError, ValueError):
            continue
        waiting += [(supervisor, r) for r in reply.get("requests", []) if isinstance(r, dict)]
    return waiting


def answer_waiting(runtime: Path, session: str | None = None) -> None:
    """Puts each waiting question (of `session`, or all) to the user on this terminal."""
    import asyncio

    from app.questions import answer_to_json, request_from_json
    from ui.prompt import TerminalPrompt

    supervisors = _supervisors(runtime)
    try:
        waiting = [
            (s, r)
            for s, r in _pending(supervisors)
            if session is None or r.get("session") == session
        ]
        if not waiting:
            print("airlock: no questions waiting", file=sys.stderr, flush=True)
        for supervisor, data in waiting:
            request = request_from_json(data)
            answer = asyncio.run(TerminalPrompt().answer(request))
            reply = supervisor.call(
                {"op": "answer", "id": request.id, "answer": answer_to_json(answer)}
            )
            if "error" in reply:
                print(f"airlock: {reply['error']}", file=sys.stderr, flush=True)
    finally:
        for supervisor in supervisors:
            supervisor.close()


def handle(ctx: Context, args: argparse.Namespace) -> int:
    import asyncio

    from app.consent import denied
    from app.questions import answer_to_json, request_from_json
    from ui.prompt import TerminalPrompt, describe

    supervisors = _supervisors(ctx.dirs.runtime)
    try:
        deadline = time.monotonic() + args.wait if args.wait else 0.0
        waiting = _pending(supervisors)
        while not waiting and time.monotonic() < deadline:
            time.sleep(0.2)
            for supervisor in supervisors:
                supervisor.close()
            supervisors = _supervisors(ctx.dirs.runtime)
            waiting = _pending(supervisors)
        if args.json:
            print(json.dumps([r for _, r in waiting], indent=2))
            return 0
        if not waiting:
            print("no questions waiting", file=sys.stderr)
            return 0
        if args.list:
            for _, data in waiting:
                print(describe(request_from_json(data)).strip("\n"))
                left = max(0, round(data["created_at"] + data["timeout"] - time.time()))
                print(f"  id {data['id']}, {left} s left")
            return 0
        for supervisor, data in waiting:
            if args.deny and data["id"] not in args.deny:
                continue
            try:
                request = request_from_json(data)
            except (KeyError, ValueError, TypeError) as e:
                print(f"airlock: a question that cannot be read: {e}", file=sys.stderr)
                continue
            if args.deny:
                answer = denied("airlock ask")
            else:
                answer = asyncio.run(TerminalPrompt().answer(request))
            reply = supervisor.call(
                {"op": "answer", "id": request.id, "answer": answer_to_json(answer)}
            )
            if "error" in reply:
                print(f"airlock: {reply['error']}", file=sys.stderr)
            elif args.deny:
                print(f"denied {request.id}")
    except (OSError, ValueError) as e:
        raise AirlockError(f"cannot reach the session's supervisor: {e}") from e
    finally:
        for supervisor in supervisors:
            supervisor.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        sub, "ask", handle, "answer the questions of agents that own their terminal"
    )
    parser.add_argument("--list", action="store_true", help="show them, answer none")
    parser.add_argument("--json", action="store_true", help="list them as JSON")
    parser.add_argument("--deny", nargs="+", metavar="ID", help="deny these questions")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a question if none is waiting",
    )
