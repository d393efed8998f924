"""The supervisor: starts a session, watches it to its end and cleans up after it, on one
asyncio loop. What it does along the way lives beside it: the engine (engine.py), the set-up
(launch.py), the sandbox check (verify.py), the output pump (pump.py), limits (limits.py),
files granted mid-run (delivery.py), stopping and sweeping (control.py), revocation and its
undo (revocation.py), what a session sees (sight.py), its place in the history (history.py)
and the registry of running sessions (registry.py). It composes them: new work on sessions
goes into a module of its own, not here.

Every engine call blocks: short ones go to the supervisor's own bounded pool, and those that
last as long as a session (its wait, its output stream, a stop's grace) to threads of their
own (app/threads.py's `BlockingCalls`), never to the loop's shared default executor, so that
many sessions at once cannot keep a new one from starting or an ended one from being seen.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import docker

from app.activity import TreeWatcher
from app.audit import Recorder
from app.consent import Answer, ConsentBroker, ConsentRequest
from app.console import Console, console_started
from app.container import LABEL_OWNER, LABEL_SESSION, Identity
from app.endings import ending, stop_requested
from app.errors import SandboxRefused, SessionError
from app.events import EventBus, EventKind
from app.grants import AnyGrant
from app.paths import Dirs
from app.profiles import Profile, ProfileCatalog
from app.sandbox import Expectation
from app.sessions.control import STOP_GRACE_SECONDS, SessionControl
from app.sessions.delivery import SessionFiles
from app.sessions.engine import DockerEngine, Engine
from app.sessions.history import SessionHistory
from app.sessions.launch import SessionSetup
from app.sessions.limits import DISK_RESERVE, disk_short, watch_disk, watch_limits
from app.sessions.model import ExtensionFactory, LaunchRequest, Output, SessionResult
from app.sessions.pump import OutputPump
from app.sessions.registry import (
    RunningSession,
    SessionRegistry,
    new_session_id,
    process_token,
)
from app.sessions.revocation import Revocation
from app.sessions.selfcheck import Gate
from app.sessions.sight import SessionSight, read_sight
from app.sessions.verify import SandboxCheck, gated
from app.store import SessionRecord, SessionState, StateStore
from app.threads import BlockingCalls
from app.view import SessionView

_E = TypeVar("_E")


class Supervisor:
    """Starts, watches and ends sessions; owns nothing global — the caller builds it.

    `engine` is the container engine (a Docker client is wrapped in `DockerEngine`);
    `registry` the sessions running here, shared with whoever needs to know them (the
    broker's profile rules)."""

    def __init__(
        self,
        engine: docker.DockerClient | Engine,
        store: StateStore,
        bus: EventBus,
        dirs: Dirs,
        catalog: ProfileCatalog,
        identity: Identity | None = None,
        extensions: Sequence[ExtensionFactory] = (),
        broker: ConsentBroker | None = None,
        recorder: Recorder | None = None,
        disk_reserve: int = DISK_RESERVE,
        registry: SessionRegistry | None = None,
    ) -> None:
        self.engine = engine  # as given: tests reach the Docker client through it
        self._engine: Engine = (
            DockerEngine(engine) if isinstance(engine, docker.DockerClient) else engine
        )
        self.store = store
        self.bus = bus
        self.dirs = dirs
        self.catalog = catalog
        self.identity = identity or Identity.for_caller()
        self.owner = str(os.getuid())
        self._extension_factories = tuple(extensions)
        self.broker = broker  # where its sessions' questions go (portal, proxy)
        self.sessions = registry or SessionRegistry()
        self.control = SessionControl(self._engine, self.owner, store, dirs, self.sessions)
        self.revocation = Revocation(self._engine, self.owner, store, dirs, bus)
        self.files = SessionFiles(self.sessions, store, bus, self.identity, self.revocation.expire)
        self._recorder = recorder  # the audit log's sink: no session runs while it fails
        self.disk_reserve = disk_reserve
        self.calls = BlockingCalls(name="engine")
        self._setup = SessionSetup(
            self._engine, self.calls, store, bus, dirs, self.identity, self.owner, self.files
        )
        self._check = SandboxCheck(self._engine, self.calls, bus, store)
        self.kept = SessionHistory(store, dirs, bus)
        self.history, self.tally = self.kept.history, self.kept.tally  # what front ends read
        if recorder is not None:
            recorder.on_failure(self._unrecorded)

    @property
    def last_session(self) -> str | None:
        """The id of the latest session `run` started."""
        return self.sessions.last_session

    def extension(self, kind: type[_E]) -> _E | None:
        """The extension factory of that type (e.g. the egress, for its network switch)."""
        for factory in self._extension_factories:
            if isinstance(factory, kind):
                return factory
        return None

    async def aclose(self) -> None:
        """Lets extension factories release what they keep between sessions (spares)."""
        for factory in self._extension_factories:
            close = getattr(factory, "aclose", None)
            if close is not None:
                await close()
        self.calls.close()

    # the life of a session

    async def run(
        self,
        request: LaunchRequest,
        output: Output,
        named: Callable[[str], None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> SessionResult:
        """Runs one session to its end. Cancelling the task stops and removes the container
        (or, while it is still being set up, ends it before anything starts). `named` hears
        the session's id before its first event; `progress` each step of the start ("creating
        the container"), for a caller that shows how far a launch got."""
        step = progress or (lambda _step: None)
        if self._recorder is not None and (why := self._recorder.check()):
            raise SessionError(
                f"the audit log cannot be written ({why}): no session runs "
                "unrecorded; free space there and start it again"
            )
        self.dirs.sessions.mkdir(parents=True, exist_ok=True)
        if (short := await asyncio.to_thread(self._disk_short)) is not None:
            raise SessionError(f"{short}; free space there and start it again")
        step("checking the image")
        swept, image = await asyncio.gather(
            self.calls.call(self.control.sweep),
            self.calls.call(self._engine.image_id, request.profile),
        )
        self.report_swept(swept)  # events are published on the loop's thread only
        seccomp = self.catalog.seccomp_path(request.profile, request.profile_path).read_text()
        session_id = new_session_id()
        if named is not None:
            named(session_id)
        view = SessionView(
            self.dirs.sessions / session_id / "view", private=(self.dirs.state, self.dirs.runtime)
        )
        running = RunningSession(session_id, view, image=image, launch=request)
        running.output_log = await asyncio.to_thread(self.kept.open, session_id)
        self.sessions.add(running)
        exit_code, reason = 1, "failed to start"
        told: str | None = None  # the reason its end is announced with, if it is
        try:
            await asyncio.to_thread(
                self.store.add_session,
                SessionRecord(
                    id=session_id,
                    profile=request.profile.name,
                    image=image,
                    container_id=None,
                    supervisor=process_token(),
                    state=SessionState.STARTING,
                    started_at=time.time(),
                ),
            )
            running.guard = self._engine.guard(
                [f"{LABEL_OWNER}={self.owner}", f"{LABEL_SESSION}={session_id}"]
            )
            step("preparing the granted files")
            grants = await self._setup.grants(session_id, request)
            labels = self._setup.labels(running.id, request.profile)
            additions = await self._setup.extensions(
                running, request, labels, seccomp, self._extension_factories
            )
            spec, image_command = await asyncio.gather(
                self._setup.spec(running, request, image, seccomp, grants, labels, additions),
                self.calls.call(self._engine.image_command, image),
            )
            running.gate = await asyncio.to_thread(Gate, self.dirs.sessions / session_id / "gate")
            spec, expected = gated(spec, running.gate, image_command)
            # The view mirrors absolute host paths, so its root stands for `/`.
            running.watched[running.view.root] = Path("/")
            running.watcher = TreeWatcher(
                session_id,
                self.bus,
                running.watched,
                on_unwatched=(functools.partial(self._partly_unwatched, running, request.profile)),
            )
            await running.watcher.start()
            step("creating the container")
            running.container = await self.calls.call(self._engine.create, spec.create_kwargs())
            step("starting the container")
            exit_code, reason = await self._supervise(running, request, output, expected)
            told = reason
            return SessionResult(session_id, exit_code, reason)
        except SandboxRefused as e:
            reason = str(e)
            raise
        except asyncio.CancelledError:
            exit_code, reason = 130, "interrupted"
            if running.container is not None:  # its end is announced, as any other end
                told = (
                    stop_requested(self.dirs.sessions, session_id)
                    or "interrupted: Airlock was told to stop it (a signal)"
                )
            raise
        finally:
            await asyncio.shield(self._end(running, exit_code, reason, told))

    async def _supervise(
        self,
        running: RunningSession,
        request: LaunchRequest,
        output: Output,
        expected: Expectation,
    ) -> tuple[int, str]:
        container = running.container
        assert container is not None
        engine, calls = self._engine, self.calls
        loop = asyncio.get_running_loop()
        drained = loop.create_future()
        pump = OutputPump(running.id, self.bus, output, running.output_log)
        # Attached before it starts, so nothing is missed; with stdin too when the caller
        # feeds it (a terminal, a pipe), over the engine's hijacked socket.
        console: Console | None = None
        if request.terminal is not None:
            console = await calls.call(engine.console, container, request.terminal.tty)
            stream = console.chunks()
        else:
            stream = await calls.call(engine.attach, container)
        reader = calls.hold(pump.run, stream, loop, drained)
        await calls.call(engine.start, container)
        assert running.gate is not None
        accept = request.profile.sandbox.accept_weaker
        verified = await self._check.verify(running.id, container, running.gate, expected, accept)
        if console is not None:
            await console_started(console, request.terminal, output)
        await asyncio.to_thread(self.store.set_session_running, running.id, container, verified)
        self.bus.emit(
            EventKind.SESSION_STARTED,
            running.id,
            running.id,
            profile=request.profile.name,
            image=running.image,
            container=container[:12],
            uid=self.identity.uid,
        )
        if running.stop_reason:  # stopped while it was starting
            await calls.call(engine.kill, container)
        if running.extensions:
            context = running.context
            assert context is not None
            for extension in running.extensions:
                await extension.started(context, container)
        pid = (await calls.call(engine.state, container)).pid
        limits = loop.create_task(watch_limits(running.id, pid, self.bus))
        running.tasks.add(loop.create_task(self._watch_disk(running)))
        running.tasks.add(limits)
        waiter = calls.hold(engine.wait, container)
        running.tasks.add(waiter)
        done, _ = await asyncio.wait({waiter}, timeout=request.timeout or request.profile.timeout)
        if not done:
            self.bus.emit(
                EventKind.SESSION_TIMEOUT,
                running.id,
                running.id,
                seconds=request.timeout or request.profile.timeout,
            )
            await calls.hold(engine.stop, container, STOP_GRACE_SECONDS)
        code = await waiter
        await asyncio.wait({reader, drained}, timeout=5)
        if console is not None:
            console.close()
        limits.cancel()
        pump.flush()
        oom = (await calls.call(engine.state, container)).oom_killed
        if oom:
            self.bus.emit(
                EventKind.SESSION_OOM,
                running.id,
                running.id,
                limit=request.profile.resources.memory,
            )
        return ending(
            code,
            timed_out=not done,
            oom=oom,
            stopped=running.stop_reason,
            asked=stop_requested(self.dirs.sessions, running.id),
        )

    def _disk_short(self) -> str | None:
        return disk_short(self.dirs.sessions, self.disk_reserve)

    async def _watch_disk(self, running: RunningSession) -> None:
        """Stops the session before what it stages fills the disk."""
        short = await watch_disk(
            self.dirs.sessions, self.disk_reserve, stopped=lambda: bool(running.stop_reason)
        )
        if short and running.container is not None:
            running.stop_reason = f"stopped: {short}"
            await self.calls.call(self._engine.kill, running.container)

    async def _end(
        self, running: RunningSession, exit_code: int, reason: str, told: str | None
    ) -> None:
        """Cleans up after the session, records its end and keeps its history; then, if
        `told`, announces the end (`session.exited`): whoever reads the store on that event
        finds the session ended, never still running."""
        try:
            await self._setup.tear_down(running)
            await asyncio.to_thread(
                self.store.end_session, running.id, SessionState.EXITED, exit_code, reason
            )
            self.sessions.remove(running.id)
            await asyncio.to_thread(self.kept.keep, running.id, running.output_log)
        finally:
            if told is not None:
                self.bus.emit(
                    EventKind.SESSION_EXITED, running.id, running.id, code=exit_code, reason=told
                )

    # what other commands do to sessions

    def sweep(self) -> list[str]:
        """Removes what crashed supervisors left behind: containers, views, live records.
        Blocking; from a loop, `run` does it in a worker thread and reports on the loop."""
        swept = self.control.sweep()
        self.report_swept(swept)
        return swept

    def report_swept(self, swept: Sequence[str]) -> None:
        for session in swept:
            self.bus.emit(
                EventKind.SESSION_SWEPT,
                session,
                session,
                reason="ended with its supervisor (Airlock was killed or crashed)",
            )

    def live_sessions(self) -> list[SessionRecord]:
        self.sweep()
        return self.store.sessions(live_only=True)

    def stop(self, session: str, reason: str = "stopped by `airlock stop`") -> list[str]:
        """Stops a session's containers (its supervisor then ends it, for `reason`).
        Blocking, and safe in a worker thread: sessions it had to sweep are returned for
        `report_swept` on the caller's loop, not published from here."""
        return self.control.stop(session, reason)

    async def astop(self, session: str, reason: str = "stopped by `airlock stop`") -> None:
        """`stop` for the loop, in a thread of its own (its grace can last seconds)."""
        self.report_swept(await self.calls.hold(self.stop, session, reason))

    def _partly_unwatched(self, running: RunningSession, profile: Profile, overflows: int) -> None:
        """The agent's file activity overflowed the watch again and again: where the
        profile says so, that stops the session."""
        if profile.watch.unwatched == "stop":
            self.control.kill_soon(
                running,
                "stopped: its file activity could not be watched (inotify queue overflowed "
                f"{overflows} times)",
            )

    def _unrecorded(self, reason: str) -> None:
        """The audit log cannot be written: every session is stopped at once, for nothing
        may run unrecorded. Called on the thread that emitted the event that failed."""
        message = (
            f"stopped: the audit log cannot be written ({reason}); free space there "
            "before starting it again"
        )
        for running in self.sessions:
            self.control.kill_soon(running, message)

    def processes(self, session: str) -> tuple[list[str], list[list[str]]]:
        """The agent's process list, as `ps` inside the container would show it."""
        return self.control.processes(session)

    async def sight(self, session: str) -> SessionSight:
        """What a running session can see right now (app/sessions/sight.py)."""
        running = self.sessions.get(session)
        if running is None or running.launch is None:
            raise SessionError(f"session {session} is not running here")
        pending = self.broker.pending if self.broker is not None else []
        launch, now = running.launch, time.time()
        return await asyncio.to_thread(read_sight, self.store, session, launch, pending, now)

    def rule_answer(self, request: ConsentRequest) -> Answer | None:
        """The answer the requesting session's own profile gives (app/rules.py), if any."""
        return self.sessions.rule_answer(request)

    # revocation and its undo (app/sessions/revocation.py, `revocation`)

    def revoke(self, grant_ids: Sequence[str]) -> list[AnyGrant]:
        """Blocking, and publishes from the calling thread: for the command line."""
        return self.revocation.revoke(grant_ids, self.bus)

    async def arevoke(self, grant_ids: Sequence[str]) -> list[AnyGrant]:
        return await self.revocation.arevoke(grant_ids)

    async def arestore(self, grant_ids: Sequence[str]) -> list[AnyGrant]:
        return await self.revocation.arestore(grant_ids)
