"""The sessions running in this process, and what is held for each: the one thing the portal,
the consent broker and the front ends need of the supervisor besides its events. Also how a
supervising process is named, so a session whose supervisor is gone can be told apart."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.activity import TreeWatcher
from app.consent import Answer, ConsentRequest
from app.history import OutputLog
from app.profiles import Approval
from app.rules import decide
from app.sessions.engine import Guard
from app.sessions.model import LaunchRequest, SessionContext, SessionExtension
from app.sessions.selfcheck import Gate
from app.staging import SessionStaging
from app.view import SessionView


@dataclass(slots=True)
class RunningSession:
    """What the supervisor holds for one live session."""

    id: str
    view: SessionView
    container: str | None = None  # the agent's container, once created
    watcher: TreeWatcher | None = None
    tasks: set[asyncio.Future[Any]] = field(default_factory=set)  # tasks, and threads' futures
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    extensions: list[SessionExtension] = field(default_factory=list)
    runtime_dir: Path | None = None
    context: SessionContext | None = None  # what the extensions were given at start
    anchors: list[Path] = field(default_factory=list)  # container paths the view is mounted at
    profile: str = ""
    approval: Approval | None = None
    image: str = ""
    staging: SessionStaging = field(init=False)
    volumes: list[str] = field(default_factory=list)
    watched: dict[Path, Path] = field(default_factory=dict)  # host dir -> path the user knows
    quota: int = 0
    stop_reason: str = ""  # why Airlock stopped it, if it did (not the agent's own exit)
    guard: Guard | None = None
    gate: Gate | None = None  # holds the agent's command until the sandbox check passed
    launch: LaunchRequest | None = None  # what it was started with (its profile, its time)
    output_log: OutputLog | None = None  # its output as the history keeps it

    def __post_init__(self) -> None:
        self.staging = SessionStaging(self.view.root.parent / "staging", self.id)


class SessionRegistry:
    """The live sessions of one supervisor, by id. Changed on the loop's thread only; the
    sweep, in a worker thread, only asks whether an id is in it."""

    def __init__(self) -> None:
        self._running: dict[str, RunningSession] = {}
        self.last_session: str | None = None  # the id of the latest session started

    def add(self, running: RunningSession) -> None:
        self._running[running.id] = running
        self.last_session = running.id

    def remove(self, session: str) -> None:
        self._running.pop(session, None)

    def get(self, session: str) -> RunningSession | None:
        return self._running.get(session)

    def __contains__(self, session: object) -> bool:
        return session in self._running

    def __iter__(self) -> Iterator[RunningSession]:
        return iter(tuple(self._running.values()))

    def rule_answer(self, request: ConsentRequest) -> Answer | None:
        """The answer the requesting session's own profile gives (app/rules.py), if any."""
        running = self._running.get(request.session)
        if running is None or running.approval is None:
            return None
        return decide(request, running.approval, Path.home())


def process_token(pid: int | None = None) -> str:
    """`pid:start-time`: names a process so that a recycled pid is not mistaken for it."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return f"{pid}:{int(fields[19])}"
    except (OSError, IndexError, ValueError):
        return f"{pid}:0"


def process_alive(token: str) -> bool:
    pid_text, _, _ = token.partition(":")
    if not pid_text.isdigit():
        return False
    return process_token(int(pid_text)) == token


def new_session_id() -> str:
    return secrets.token_hex(4)
