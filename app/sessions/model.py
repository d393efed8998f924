"""The plain data and the contracts of a session: what is asked for, what it ends with, where
its output goes, and what an extension beside the agent is told."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from app.console import Terminal
from app.container import ContainerAdditions, Identity
from app.delivery import FileDelivery
from app.events import EventBus
from app.grants import GrantRequest
from app.profiles import Profile
from app.view import SessionView


class Output(Protocol):
    """Where the agent's stdout and stderr go (the terminal, the app's log view)."""

    def write(self, stream: str, data: bytes) -> None: ...


@runtime_checkable
class DrainingOutput(Output, Protocol):
    """An output that can fall behind (a socket to a client): the agent's streams are read
    no faster than `drain` lets through, so an agent that prints more than its reader takes
    is held up, as by a terminal, instead of filling the supervisor's memory."""

    async def drain(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What an extension gets to know about the session it serves."""

    id: str
    profile: Profile
    identity: Identity
    runtime_dir: Path  # private to the session: sockets go here (short path, < 108 bytes)
    view: SessionView
    bus: EventBus
    labels: Mapping[str, str]  # put them on any sidecar container, so sweeps find it
    seccomp: str = ""  # the profile's seccomp JSON: sidecars are held to it too
    # How files the user picks reach this session (the portal calls it); None only for
    # contexts built outside a supervisor.
    files: FileDelivery | None = None


class SessionExtension(Protocol):
    """A part of a session beside the agent's container: the portal's private bus, the
    egress bridge. `prepare` runs before the agent's container exists, `started` once it
    runs, `close` when the session ends (also after a failed start)."""

    async def prepare(self, session: SessionContext) -> ContainerAdditions: ...

    async def started(self, session: SessionContext, container_id: str) -> None: ...

    async def close(self) -> None: ...


ExtensionFactory = Callable[[], SessionExtension]


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    profile: Profile
    profile_path: Path
    grants: tuple[GrantRequest, ...] = ()
    command: tuple[str, ...] | None = None
    timeout: float | None = None
    terminal: Terminal | None = None  # None: the agent's stdin is empty (the desktop app)


@dataclass(frozen=True, slots=True)
class SessionResult:
    session: str
    exit_code: int
    reason: str
