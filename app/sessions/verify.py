"""The sandbox self-check in a session's start: the gate put in front of the agent's command,
the started container compared with what was asked for (app/sandbox.py), and the gate opened
(with a warning if the profile accepts what differs, app/weaker.py) or the session refused
naming every check that failed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from app import gvisor, weaker
from app.container import BindMount, ContainerSpec
from app.engine_kind import EngineKind
from app.errors import SandboxRefused
from app.events import EventBus, EventKind
from app.sandbox import (
    GATE_DIR,
    GATE_FIFO_PATH,
    Check,
    Expectation,
    check_sandbox,
    gate_command,
    summary,
)
from app.sessions.engine import Engine
from app.sessions.selfcheck import Gate
from app.store import StateStore
from app.threads import BlockingCalls


def gated(
    spec: ContainerSpec, gate: Gate, image_command: tuple[tuple[str, ...], ...]
) -> tuple[ContainerSpec, Expectation]:
    """The spec with the gate in front of what the image and profile run, and what the
    sandbox check expects of the container made from it."""
    image_entrypoint, image_cmd = image_command
    entrypoint, command = gate_command(GATE_FIFO_PATH, image_entrypoint, spec.command or image_cmd)
    spec = dataclasses.replace(
        spec,
        entrypoint=tuple(entrypoint),
        command=tuple(command),
        mounts=(*spec.mounts, BindMount(gate.directory, Path(GATE_DIR))),
    )
    return spec, Expectation(spec, tuple(entrypoint), ("lo", *spec.interfaces), spec.listening)


def refusal(session: str, engine: EngineKind, failed: Sequence[Check]) -> str:
    """The refusal, naming the engine and every check that failed (an engine that drops a
    setting usually drops several: memory, pids and CPU limits together), and, when every
    failure is a difference a profile may accept, how."""
    more = (
        f" (and {len(failed) - 1} more: {', '.join(c.name for c in failed[1:])})"
        if len(failed) > 1
        else ""
    )
    why = (
        ""
        if engine.limits_enforced
        else "; a rootless engine on cgroup v1 cannot enforce resource limits (see `airlock "
        "doctor`)"
    )
    acceptable = weaker.refusable(failed)
    how = (
        f"; a profile can accept running without them: [sandbox] accept_weaker = "
        f"[{', '.join(json.dumps(name) for name in acceptable)}]"
        if acceptable
        else ""
    )
    return (
        f"session {session} refused: the sandbox {engine.describe()} made is not what "
        f"was asked for — {failed[0].describe()}{more}{why}{how}"
    )


class SandboxCheck:
    """Checks each started container while its gate holds the agent's command."""

    def __init__(
        self, engine: Engine, calls: BlockingCalls, bus: EventBus, store: StateStore
    ) -> None:
        self._engine = engine
        self._calls = calls
        self._bus = bus
        self._store = store

    async def verify(
        self,
        session: str,
        container: str,
        gate: Gate,
        expected: Expectation,
        accept: tuple[str, ...] = (),
    ) -> str:
        """Opens the gate if every check passed, or every failed one is a difference the
        profile accepts (`accept`, app/weaker.py: the session then runs with a warning), and
        returns the outcome the sessions table shows; otherwise kills the container, records
        the outcome and raises `SandboxRefused` naming the checks that failed."""
        started = time.perf_counter()
        report = await self._calls.call(self._engine.report, container)
        checks = check_sandbox(expected, report)
        seconds = round(time.perf_counter() - started, 4)
        failed = [c for c in checks if not c.passed]
        verdict = weaker.judge(failed, accept)
        outcome = summary(checks)
        if not verdict.runs:
            await self._calls.call(self._engine.kill, container)
            self._bus.emit(
                EventKind.SANDBOX_REFUSED,
                session,
                session,
                check=failed[0].name,
                expected=failed[0].expected,
                found=failed[0].found,
                failed=[c.describe() for c in failed],
                checks=len(checks),
                seconds=seconds,
            )
            await asyncio.to_thread(self._store.set_sandbox, session, outcome)
            raise SandboxRefused(refusal(session, report.kind, failed))
        gate.open()
        # What is checked differently is said wherever the status is shown, never left out.
        note = {"note": gvisor.NOTE} if gvisor.is_gvisor(expected.spec.runtime) else {}
        accepted = {}
        if verdict.accepted:
            outcome = weaker.summary(report.kind, checks, verdict)
            accepted = {
                "weaker": list(verdict.weaker),
                "accepted": [c.describe() for c in verdict.accepted],
                "engine": report.kind.describe(),
                "warning": weaker.warning(report.kind, verdict.weaker),
            }
        self._bus.emit(
            EventKind.SANDBOX_VERIFIED,
            session,
            session,
            checks=len(checks),
            seconds=seconds,
            **note,
            **accepted,
        )
        return f"{outcome}; {gvisor.NOTE}" if note else outcome
