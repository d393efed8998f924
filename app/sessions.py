"""Sessions: one hardened, throw-away container per agent run, supervised on one asyncio loop.

Every Docker SDK call blocks, so each goes through `asyncio.to_thread`; the output stream
is read by a thread and handed back to the loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar, runtime_checkable

import docker
import docker.errors
from docker.models.containers import Container

from app.activity import TreeWatcher
from app.audit import Recorder
from app.consent import Answer, ConsentBroker, ConsentRequest
from app.console import Console, Terminal, console_started
from app.container import (
    LABEL_OWNER,
    LABEL_PROFILE,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_SUPERVISOR,
    BindMount,
    ContainerAdditions,
    ContainerSpec,
    Identity,
    VolumeMount,
    build_spec,
)
from app.delivery import DOCUMENTS, SAVES
from app.endings import request_stop, stop_requested
from app.errors import EngineError, GrantError, ImageError, SessionError
from app.events import EventBus, EventKind, TokenBucket
from app.grants import Grant, GrantRequest, Lifetime, Mode, check_grant_path, grant_for
from app.paths import Dirs
from app.profiles import Approval, Profile, ProfileCatalog
from app.rules import decide
from app.staging import RootKind, SessionStaging
from app.store import SessionRecord, SessionState, StateStore
from app.view import SessionView, anchors_for

log = logging.getLogger(__name__)

EXIT_TIMEOUT = 124
STOP_GRACE_SECONDS = 5
LIMIT_POLL_SECONDS = 0.5
DISK_POLL_SECONDS = 0.1  # statvfs is cheap, and a disk fills at a GB a second
MAX_EVENT_LINE = 4096
# Output lines become events (and audit records) at most this fast per session, after a first
# burst: an agent printing at full speed must not turn into as many audit records. What is
# held back is counted, per stream, in one event before the next line that goes through.
OUTPUT_LINES_BURST = 2000
OUTPUT_LINES_PER_SECOND = 200
# What an agent writes is staged on the disk of Airlock's state, with no quota of its own
# (that needs privileges): sessions stop before they leave less than this free there.
DISK_RESERVE = 128 * 1024**2


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


class SessionExtension(Protocol):
    """A part of a session beside the agent's container: the portal's private bus, the
    egress bridge. `prepare` runs before the agent's container exists, `started` once it
    runs, `close` when the session ends (also after a failed start)."""

    async def prepare(self, session: SessionContext) -> ContainerAdditions: ...

    async def started(self, session: SessionContext, container_id: str) -> None: ...

    async def close(self) -> None: ...


ExtensionFactory = Callable[[], SessionExtension]
_E = TypeVar("_E")


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


@dataclass(slots=True)
class _LineBudget:
    """A token bucket of output-line events, and the lines held back, per stream."""

    bucket: TokenBucket = field(
        default_factory=lambda: TokenBucket(OUTPUT_LINES_BURST, OUTPUT_LINES_PER_SECOND))
    held: dict[str, list[int]] = field(default_factory=dict)  # stream -> [lines, bytes]

    def take(self) -> bool:
        return self.bucket.take()

    def hold(self, stream: str, size: int) -> None:
        held = self.held.setdefault(stream, [0, 0])
        held[0] += 1
        held[1] += size


# Run by a process of its own for each session, which outlives the supervisor: it waits on a
# pipe from it. "done" (the session ended as usual) ends it quietly; the end of the pipe
# without it means the supervisor is gone (killed, crashed: the kernel closes its end), and
# the session's containers go too: its agent must not run on unwatched, past its timeout.
_REAPER = """
import sys
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
import docker
from app.engine import connect_engine
engine = connect_engine()
for found in engine.api.containers(all=True, filters={"label": sys.argv[1:]}):
    try:
        engine.api.remove_container(found["Id"], force=True)
    except docker.errors.APIError as e:
        print(f"airlock: cannot remove container {found['Id'][:12]}: {e}", file=sys.stderr)
"""


class _Reaper:
    """Removes a session's containers if its supervisor dies first (see `_REAPER`)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _REAPER, *labels], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True,  # not ended by a Ctrl-C
        )

    def done(self) -> None:
        """The session ended as usual: the reaper leaves without doing anything."""
        stdin = self._process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError):
            stdin.write(b"done")
        with contextlib.suppress(OSError):
            stdin.close()
        threading.Thread(target=self._process.wait, daemon=True).start()


@dataclass(slots=True)
class _Running:
    """What the supervisor holds for one live session."""

    id: str
    view: SessionView
    container: Container | None = None
    watcher: TreeWatcher | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    line_buffers: dict[str, bytes] = field(default_factory=dict)
    line_budget: _LineBudget = field(default_factory=_LineBudget)
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
    reaper: _Reaper | None = None

    def __post_init__(self) -> None:
        self.staging = SessionStaging(self.view.root.parent / "staging", self.id)


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


class Supervisor:
    """Starts, watches and ends sessions; owns nothing global — the caller builds it."""

    def __init__(
        self,
        engine: docker.DockerClient,
        store: StateStore,
        bus: EventBus,
        dirs: Dirs,
        catalog: ProfileCatalog,
        identity: Identity | None = None,
        extensions: Sequence[ExtensionFactory] = (),
        broker: ConsentBroker | None = None,
        recorder: Recorder | None = None,
        disk_reserve: int = DISK_RESERVE,
    ) -> None:
        self.engine = engine
        self.store = store
        self.bus = bus
        self.dirs = dirs
        self.catalog = catalog
        self.identity = identity or Identity.for_caller()
        self.owner = str(os.getuid())
        self._extension_factories = tuple(extensions)
        self.broker = broker  # where its sessions' questions go (portal, proxy)
        self.last_session: str | None = None  # the id of the latest session `run` started
        self._running: dict[str, _Running] = {}
        self._recorder = recorder  # the audit log's sink: no session runs while it fails
        self.disk_reserve = disk_reserve
        if recorder is not None:
            recorder.on_failure(self._unrecorded)

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

    # the life of a session

    async def run(self, request: LaunchRequest, output: Output,
                  named: Callable[[str], None] | None = None) -> SessionResult:
        """Runs one session to its end. Cancelling the task stops and removes the container.
        `named` hears the session's id before its first event."""
        if self._recorder is not None and (why := self._recorder.check()):
            raise SessionError(f"the audit log cannot be written ({why}): no session runs "
                               "unrecorded; free space there and start it again")
        self.dirs.sessions.mkdir(parents=True, exist_ok=True)
        if (short := await asyncio.to_thread(self._disk_short)) is not None:
            raise SessionError(f"{short}; free space there and start it again")
        swept, image = await asyncio.gather(
            asyncio.to_thread(self._sweep), asyncio.to_thread(self._check_image, request.profile)
        )
        self.report_swept(swept)  # events are published on the loop's thread only
        seccomp = self.catalog.seccomp_path(request.profile, request.profile_path).read_text()
        session_id = new_session_id()
        if named is not None:
            named(session_id)
        view = SessionView(self.dirs.sessions / session_id / "view",
                           private=(self.dirs.state, self.dirs.runtime))
        running = _Running(session_id, view, image=image)
        self.last_session = session_id
        self._running[session_id] = running
        self.store.add_session(
            SessionRecord(
                id=session_id, profile=request.profile.name, image=image, container_id=None,
                supervisor=process_token(), state=SessionState.STARTING, started_at=time.time(),
            )
        )
        exit_code, reason = 1, "failed to start"
        try:
            running.reaper = _Reaper(
                [f"{LABEL_OWNER}={self.owner}", f"{LABEL_SESSION}={session_id}"])
            grants = self._session_grants(session_id, request)
            labels = self._labels(running.id, request.profile)
            additions = await self._prepare_extensions(running, request, labels, seccomp)
            spec = await self._prepare(
                running, request, image, seccomp, grants, labels, additions)
            # The view mirrors absolute host paths, so its root stands for `/`.
            running.watched[running.view.root] = Path("/")
            running.watcher = TreeWatcher(session_id, self.bus, running.watched)
            await running.watcher.start()
            container = await asyncio.to_thread(self._create, spec.create_kwargs())
            running.container = container
            exit_code, reason = await self._supervise(running, request, container, output)
            return SessionResult(session_id, exit_code, reason)
        except asyncio.CancelledError:
            exit_code, reason = 130, "interrupted"
            if running.container is not None:  # its end is recorded, as any other end
                self.bus.emit(EventKind.SESSION_EXITED, session_id, session_id, code=exit_code,
                              reason=stop_requested(self.dirs.sessions, session_id) or
                              "interrupted: Airlock was told to stop it (a signal)")
            raise
        finally:
            await asyncio.shield(self._end(running, exit_code, reason))

    def _session_grants(self, session_id: str, request: LaunchRequest) -> list[Grant]:
        now = time.time()
        home = Path.home()
        requests = list(request.grants)
        for default in request.profile.grants:
            path = default.resolved(home)
            try:
                requests.append(check_grant_path(path, Mode(default.mode), Path.cwd()))
            except GrantError as e:
                self.bus.emit(EventKind.GRANT_SKIPPED, session_id, str(path), reason=str(e))
        grants = [grant_for(r, lifetime=Lifetime.SESSION, session=session_id, now=now)
                  for r in requests]
        self.store.add_grants(grants, session=session_id)
        stored = self.store.profile_grants(request.profile.name, now)
        self.store.link_grants(session_id, stored)
        return grants + stored

    async def _prepare(
        self,
        running: _Running,
        request: LaunchRequest,
        image: str,
        seccomp: str,
        grants: Sequence[Grant],
        labels: Mapping[str, str],
        additions: Sequence[ContainerAdditions],
    ) -> ContainerSpec:
        rw_trees = [g for g in grants if g.mode is Mode.READ_WRITE and g.path.is_dir()]
        # What a read-write tree covers is already in its overlay.
        effective = [g for g in grants
                     if not any(t is not g and t.covers(g.path) for t in rw_trees)]
        staged: list[BindMount | VolumeMount] = []
        quota = request.profile.resources.staging
        owner = (self.identity.uid, self.identity.gid)
        for grant in effective:
            mirrored = await asyncio.to_thread(running.view.add, grant.path)
            self.bus.emit(
                EventKind.GRANT_ADDED, running.id, str(grant.path), grant=grant.id,
                mode=str(grant.mode), lifetime=str(grant.lifetime), linked=mirrored.linked,
                copied=mirrored.copied, directories=mirrored.directories,
            )
            for path, why in mirrored.skipped:
                self.bus.emit(EventKind.GRANT_SKIPPED, running.id, path, reason=why)
            if grant.expires_at is not None:
                self._schedule_expiry(running, grant)
            if grant.mode is not Mode.READ_WRITE:
                continue
            if grant in rw_trees:
                root, upper, work = await asyncio.to_thread(
                    running.staging.add_tree, grant.path, grant.id, quota, owner)
                lower = running.staging.root / root.id / "lower"
                lower.symlink_to(running.view.mirror_path(grant.path))
                volume = await asyncio.to_thread(
                    self._create_volume, f"airlock-{running.id}-{root.id}", lower, upper, work,
                    labels)
                running.volumes.append(volume)
                running.watched[upper] = grant.path
                staged.append(VolumeMount(volume, grant.path))
            else:
                root = await asyncio.to_thread(
                    running.staging.add_file, grant.path, grant.id, quota,
                    running.staging.root / "files" / secrets.token_hex(4), True, owner)
                staged.append(BindMount(root.upper, grant.path, read_only=False))
        saves = running.staging.root / "saves"
        saves.mkdir(parents=True, exist_ok=True, mode=0o755)
        if os.getuid() == 0:
            os.chown(saves, *owner)
        staged.append(BindMount(saves, Path(SAVES), read_only=False))
        # The documents area is always there, so files granted mid-run have a place to appear.
        anchors = [*anchors_for((g.path, g.path.is_dir()) for g in effective
                                if g not in rw_trees), Path(DOCUMENTS)]
        mounts = [(running.view.prepare_anchor(anchor), anchor) for anchor in anchors]
        running.anchors = anchors
        running.profile = request.profile.name
        running.approval = request.profile.approval
        running.quota = quota
        return build_spec(
            profile=request.profile, session=running.id, image=image, command=request.command,
            identity=self.identity, anchors=mounts,
            first_grant=grants[0].path if grants else None, seccomp=seccomp,
            labels=dict(labels, **{LABEL_ROLE: "agent"}), additions=additions, staged=staged,
            terminal=request.terminal,
        )

    def _create_volume(self, name: str, lower: Path, upper: Path, work: Path,
                       labels: Mapping[str, str]) -> str:
        for path in (lower, upper, work):
            if "," in str(path) or ":" in str(path):
                raise GrantError(
                    f"{path}: overlay mounts cannot take ',' or ':' in a path; point "
                    "XDG_STATE_HOME somewhere without them")
        options = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr"
        try:
            volume = self.engine.volumes.create(
                name=name, driver="local", labels=dict(labels),
                driver_opts={"type": "overlay", "device": "overlay", "o": options})
        except docker.errors.APIError as e:
            raise EngineError(f"cannot create the staging overlay: {e.explanation}") from e
        return str(volume.name)

    def _remove_volumes(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                self.engine.api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                log.warning("cannot remove volume %s: %s", name, e.explanation)

    def _labels(self, session: str, profile: Profile) -> dict[str, str]:
        return {
            LABEL_SESSION: session,
            LABEL_OWNER: self.owner,
            LABEL_SUPERVISOR: process_token(),
            LABEL_PROFILE: profile.name,
        }


    async def _prepare_extensions(
        self, running: _Running, request: LaunchRequest, labels: Mapping[str, str],
        seccomp: str,
    ) -> list[ContainerAdditions]:
        if not self._extension_factories:
            return []
        running.runtime_dir = self.dirs.runtime / running.id
        # Searchable by the agent's uid, which is not ours when root runs agents as nobody.
        running.runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        context = SessionContext(running.id, request.profile, self.identity,
                                 running.runtime_dir, running.view, self.bus, labels, seccomp)
        running.context = context
        additions = []
        for factory in self._extension_factories:
            extension = factory()
            running.extensions.append(extension)
            additions.append(await extension.prepare(context))
        return additions

    async def _supervise(
        self, running: _Running, request: LaunchRequest, container: Container, output: Output
    ) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        drained = loop.create_future()
        # Attached before it starts, so nothing is missed; and without `logs`: the engine
        # keeps none (log driver "none"), and asking for them stalls the attach.
        console: Console | None = None
        if request.terminal is not None:  # stdin too, over the engine's hijacked socket
            console = await asyncio.to_thread(
                Console.attach, self.engine.api, container.id or "", request.terminal.tty)
            stream: Any = console.chunks()
        else:
            stream = await asyncio.to_thread(
                container.attach, stdout=True, stderr=True, stream=True, logs=False, demux=True
            )
        reader = loop.run_in_executor(
            None, self._pump_output, stream, running, output, loop, drained
        )
        await asyncio.to_thread(container.start)
        if console is not None:
            await console_started(console, request.terminal, output)
        self.store.set_session_running(running.id, container.id or "")
        self.bus.emit(
            EventKind.SESSION_STARTED, running.id, running.id, profile=request.profile.name,
            image=running.image, container=container.short_id, uid=self.identity.uid,
        )
        if running.stop_reason:  # stopped while it was starting
            await asyncio.to_thread(self._kill_container, container)
        if running.extensions:
            context = running.context
            assert context is not None
            for extension in running.extensions:
                await extension.started(context, container.id or "")
        await asyncio.to_thread(container.reload)
        limits = loop.create_task(self._watch_limits(running, container))
        running.tasks.add(loop.create_task(self._watch_disk(running, container)))
        running.tasks.add(limits)
        waiter = loop.create_task(asyncio.to_thread(container.wait))
        running.tasks.add(waiter)
        reason = ""
        done, _ = await asyncio.wait({waiter}, timeout=request.timeout or request.profile.timeout)
        if not done:
            reason = "timed out"
            self.bus.emit(EventKind.SESSION_TIMEOUT, running.id, running.id,
                          seconds=request.timeout or request.profile.timeout)
            await asyncio.to_thread(container.stop, timeout=STOP_GRACE_SECONDS)
        status = await waiter
        await asyncio.wait({reader, drained}, timeout=5)
        if console is not None:
            console.close()
        limits.cancel()
        self._flush_lines(running)
        code = int(status.get("StatusCode", 1))
        await asyncio.to_thread(container.reload)
        state = container.attrs.get("State", {})
        if state.get("OOMKilled"):
            reason = "killed: out of memory"
            self.bus.emit(EventKind.SESSION_OOM, running.id, running.id,
                          limit=request.profile.resources.memory)
        if reason == "timed out":
            code = EXIT_TIMEOUT
        elif running.stop_reason:
            reason = running.stop_reason
        elif asked := stop_requested(self.dirs.sessions, running.id):
            reason = asked
        elif not reason:
            reason = _describe_exit(code)
        self.bus.emit(EventKind.SESSION_EXITED, running.id, running.id, code=code, reason=reason)
        return code, reason

    def _pump_output(
        self,
        stream: Any,
        running: _Running,
        output: Output,
        loop: asyncio.AbstractEventLoop,
        drained: asyncio.Future[None],
    ) -> None:
        """Reads the agent's streams (in a thread) and hands each piece to the loop; waits
        for an output that can fall behind to take it before reading on."""
        draining = isinstance(output, DrainingOutput)
        try:
            for stdout, stderr in stream:
                for name, data in (("stdout", stdout), ("stderr", stderr)):
                    if not data:
                        continue
                    if not draining:
                        loop.call_soon_threadsafe(self._on_output, running, output, name, data)
                        continue
                    delivered = asyncio.run_coroutine_threadsafe(
                        self._deliver(running, output, name, data), loop)  # type: ignore[arg-type]
                    draining = _wait_delivered(delivered, loop)
        except (docker.errors.APIError, OSError, ValueError) as e:
            log.debug("output stream of %s ended: %s", running.id, e)
        except RuntimeError as e:  # the loop closed under us: nobody to deliver to
            log.debug("output stream of %s abandoned: %s", running.id, e)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_done, drained)

    async def _deliver(self, running: _Running, output: DrainingOutput, name: str,
                       data: bytes) -> bool:
        """Writes a piece of output and waits until the output has room again; False once
        the output is gone (its reader left): the rest is read, and not held up."""
        self._on_output(running, output, name, data)
        try:
            await output.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def _on_output(self, running: _Running, output: Output, name: str, data: bytes) -> None:
        try:
            output.write(name, data)
        except OSError as e:
            log.warning("cannot write the agent's %s: %s", name, e)
        buffered = running.line_buffers.get(name, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > MAX_EVENT_LINE:
            lines.append(rest)
            rest = b""
        running.line_buffers[name] = rest
        for line in lines:
            self._emit_line(running, name, line)

    def _flush_lines(self, running: _Running) -> None:
        for name, rest in running.line_buffers.items():
            if rest:
                self._emit_line(running, name, rest)
        running.line_buffers.clear()
        self._emit_held(running)

    def _emit_line(self, running: _Running, stream: str, line: bytes) -> None:
        if not running.line_budget.take():
            running.line_budget.hold(stream, len(line))
            return
        self._emit_held(running)
        text = line[:MAX_EVENT_LINE].decode("utf-8", "replace")
        self.bus.emit(EventKind.SESSION_OUTPUT, running.id, stream, text=text, size=len(line))

    def _emit_held(self, running: _Running) -> None:
        """One event for each stream's lines held back since the last line that went through
        (the output itself is whole: only the events are summed up)."""
        for stream, (lines, size) in running.line_budget.held.items():
            self.bus.emit(
                EventKind.SESSION_OUTPUT, running.id, stream, size=size, lines=lines,
                text=f"[{lines} more line(s), {size} bytes: printed faster than "
                     f"{OUTPUT_LINES_PER_SECOND} lines a second, not recorded one by one]")
        running.line_budget.held.clear()

    async def _watch_limits(self, running: _Running, container: Container) -> None:
        """Polls the container's cgroup for hits of the pids and memory limits: the engine
        reports an OOM kill only at exit, and pids exhaustion not at all."""
        pid = int(container.attrs["State"]["Pid"] or 0)
        counters = await asyncio.to_thread(_limit_counter_files, pid)
        # The container's cgroup is its own, made at its start: what the counters hold at the
        # first look (an agent can hit a limit before then) is already this session's.
        seen: dict[str, int] = {}
        while counters:
            for name, path in counters.items():
                value = await asyncio.to_thread(_read_counter, path)
                if value is not None and value > seen.get(name, 0):
                    self.bus.emit(EventKind.SESSION_LIMIT, running.id, name, count=value)
                    seen[name] = value
            await asyncio.sleep(LIMIT_POLL_SECONDS)

    def _disk_short(self) -> str | None:
        """Why the disk the sessions stage their writes on is too full for one, if it is."""
        st = os.statvfs(self.dirs.sessions)
        left = st.f_bavail * st.f_frsize
        if left >= self.disk_reserve:
            return None
        return (f"only {left // 1024**2} MiB left on the disk of {self.dirs.sessions}, "
                f"where sessions stage their writes (at least {self.disk_reserve // 1024**2} "
                "MiB must stay free)")

    async def _watch_disk(self, running: _Running, container: Container) -> None:
        """Stops the session before what it stages fills the disk: an overlay's upper layer
        and the saves area have no quota of their own."""
        while not running.stop_reason:
            short = await asyncio.to_thread(self._disk_short)
            if short is not None:
                running.stop_reason = f"stopped: {short}"
                await asyncio.to_thread(self._kill_container, container)
                return
            await asyncio.sleep(DISK_POLL_SECONDS)

    async def _end(self, running: _Running, exit_code: int, reason: str) -> None:
        for timer in running.timers:
            timer.cancel()
        for task in running.tasks:
            task.cancel()
        removed = running.container is None or await asyncio.to_thread(
            self._remove_container, running.container)
        if running.reaper is not None:
            running.reaper.done()
        if removed:
            # No process is left that could write a staged file: committing may move them.
            await asyncio.to_thread(running.staging.seal)
        if running.volumes:
            await asyncio.to_thread(self._remove_volumes, running.volumes)
        for extension in reversed(running.extensions):
            try:
                await extension.close()
            except Exception:
                log.exception("session %s: closing %r failed", running.id, extension)
        if running.runtime_dir is not None:
            await asyncio.to_thread(shutil.rmtree, running.runtime_dir, True)
        if running.watcher is not None:
            await running.watcher.stop()
        await asyncio.to_thread(running.view.discard)
        self.store.end_session(running.id, SessionState.EXITED, exit_code, reason)
        self._running.pop(running.id, None)

    def _schedule_expiry(self, running: _Running, grant: Grant) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (grant.expires_at or 0) - time.time())
        running.timers.append(loop.call_later(delay, self.revoke, [grant.id]))

    # engine helpers (blocking: call through asyncio.to_thread)

    def _check_image(self, profile: Profile) -> str:
        try:
            image = self.engine.images.get(profile.image)
        except docker.errors.ImageNotFound as e:
            raise ImageError(
                f"image {profile.image} is not in the engine; build it with `airlock image build`"
            ) from e
        except docker.errors.APIError as e:
            raise EngineError(f"cannot inspect image {profile.image}: {e.explanation}") from e
        if profile.image_digest:
            digests = {image.id} | {d.partition("@")[2] for d in image.attrs.get("RepoDigests", [])}
            if profile.image_digest not in digests:
                raise ImageError(
                    f"image {profile.image} is {image.id}, not the pinned "
                    f"{profile.image_digest}: refusing to run it"
                )
        if profile.runtime:
            runtimes = self.engine.info().get("Runtimes", {})
            if profile.runtime not in runtimes:
                raise EngineError(
                    f"profile {profile.name} asks for runtime {profile.runtime!r}, which the "
                    f"engine does not have (it has: {', '.join(sorted(runtimes))}); install it "
                    "or remove `runtime` from the profile"
                )
        return image.id or profile.image

    def _create(self, kwargs: dict[str, Any]) -> Container:
        try:
            # The low-level call: `containers.create` would inspect the new container again.
            api = self.engine.api
            arguments = dict(kwargs, host_config=api.create_host_config(**kwargs["host_config"]))
            create = api.create_container(**arguments)
            return self.engine.containers.prepare_model({"Id": create["Id"]})
        except docker.errors.APIError as e:
            raise EngineError(f"the engine refused the container: {e.explanation}") from e

    def _remove_container(self, container: Container) -> bool:
        """True once the container is gone."""
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log.warning("cannot remove container %s: %s", container.short_id, e.explanation)
            return False
        return True

    def _containers(self, session: str | None = None) -> list[Container]:
        labels = [f"{LABEL_OWNER}={self.owner}"]
        labels.append(f"{LABEL_SESSION}={session}" if session else LABEL_SESSION)
        return list(
            self.engine.containers.list(all=True, sparse=True, filters={"label": labels})
        )

    # what other commands do to sessions

    def sweep(self) -> list[str]:
        """Removes what crashed supervisors left behind: containers, views, live records.
        Blocking; from a loop, `run` does it in a worker thread and reports on the loop."""
        swept = self._sweep()
        self.report_swept(swept)
        return swept

    def report_swept(self, swept: Sequence[str]) -> None:
        for session in swept:
            self.bus.emit(EventKind.SESSION_SWEPT, session, session,
                          reason="ended with its supervisor (Airlock was killed or crashed)")

    def _sweep(self) -> list[str]:
        swept = []
        for container in self._containers():
            labels = container.attrs.get("Labels") or {}  # a sparse listing: no inspect
            session = labels.get(LABEL_SESSION, "")
            if session in self._running or process_alive(labels.get(LABEL_SUPERVISOR, "")):
                continue
            self._remove_container(container)
            swept.append(session)
        volumes = self.engine.api.volumes(filters={"label": f"{LABEL_OWNER}={self.owner}"})
        for volume in (volumes or {}).get("Volumes") or []:
            labels = volume.get("Labels") or {}
            if labels.get(LABEL_SESSION) in self._running:
                continue
            if not process_alive(labels.get(LABEL_SUPERVISOR, "")):
                self._remove_volumes([volume["Name"]])
        for record in self.store.sessions(live_only=True):
            if record.id in self._running or process_alive(record.supervisor):
                continue
            SessionView(self.dirs.sessions / record.id / "view").discard()
            shutil.rmtree(self.dirs.runtime / record.id, ignore_errors=True)
            self.store.end_session(record.id, SessionState.SWEPT, None, "supervisor vanished")
            if record.id not in swept:
                swept.append(record.id)
        return swept

    def live_sessions(self) -> list[SessionRecord]:
        self.sweep()
        return self.store.sessions(live_only=True)

    def stop(self, session: str, reason: str = "stopped by `airlock stop`") -> list[str]:
        """Stops a session's containers (its supervisor then ends it, for `reason`).
        Blocking, and safe in a worker thread: sessions it had to sweep are returned for
        `report_swept` on the caller's loop, not published from here."""
        record = self.store.session(session)
        if record is None or not record.live:
            raise SessionError(f"no running session {session!r} (see `airlock sessions`)")
        request_stop(self.dirs.sessions, session, reason)
        containers = self._containers(session)
        for container in containers:
            try:
                container.stop(timeout=STOP_GRACE_SECONDS)
            except docker.errors.APIError as e:
                raise EngineError(f"cannot stop session {session}: {e.explanation}") from e
        if not containers or not process_alive(record.supervisor):
            return self._sweep()
        return []

    def _kill_agent(self, session: str) -> None:
        """Kills the session's agent now (no grace: it must not read on); its supervisor
        then ends the session as usual."""
        for container in self._containers(session):
            if (container.attrs.get("Labels") or {}).get(LABEL_ROLE, "agent") == "agent":
                self._kill_container(container)

    @staticmethod
    def _kill_container(container: Container) -> None:
        try:
            container.kill()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # not running (yet, or any more)
            log.warning("cannot kill container %s: %s", container.short_id, e.explanation)

    def _unrecorded(self, reason: str) -> None:
        """The audit log cannot be written: every session is stopped at once, for nothing
        may run unrecorded. Called on the thread that emitted the event that failed."""
        message = (f"stopped: the audit log cannot be written ({reason}); free space there "
                   "before starting it again")
        for running in tuple(self._running.values()):
            running.stop_reason = running.stop_reason or message
            threading.Thread(target=self._kill_agent, args=(running.id,),
                             name=f"stop-{running.id}", daemon=True).start()

    def processes(self, session: str) -> tuple[list[str], list[list[str]]]:
        """The agent's process list, as `ps` inside the container would show it."""
        record = self.store.session(session)
        containers = self._containers(session) if record is not None and record.live else []
        containers = [c for c in containers
                      if (c.attrs.get("Labels") or {}).get(LABEL_ROLE, "agent") == "agent"]
        if not containers:
            raise SessionError(f"no running session {session!r} (see `airlock sessions`)")
        try:
            top = self.engine.api.top(containers[0].id or "", ps_args="-o pid,user,etime,args")
        except docker.errors.APIError as e:
            raise EngineError(f"cannot list the processes of {session}: {e.explanation}") from e
        return list(top.get("Titles") or []), [list(p) for p in top.get("Processes") or []]

    def rule_answer(self, request: ConsentRequest) -> Answer | None:
        """The answer the requesting session's own profile gives (app/rules.py), if any."""
        running = self._running.get(request.session)
        if running is None or running.approval is None:
            return None
        return decide(request, running.approval, Path.home())

    # files granted mid-run (app.delivery.FileDelivery)

    async def open_files(
        self,
        session: str,
        paths: Sequence[Path],
        mode: Mode,
        lifetime: Lifetime,
        until: float | None = None,
    ) -> list[PurePosixPath]:
        running = self._running.get(session)
        if running is None:
            raise SessionError(f"session {session!r} is not running in this supervisor")
        requests = [check_grant_path(path, mode, Path("/")) for path in paths]
        if mode is Mode.READ_WRITE and any(r.path.is_dir() for r in requests):
            raise GrantError("read-write folders can only be granted when a session starts; "
                             "grant files, or the folder read-only")
        located: list[PurePosixPath] = []
        for request in requests:
            grant = grant_for(
                request, lifetime=lifetime,
                session=None if lifetime is Lifetime.ALWAYS else session,
                profile=running.profile if lifetime is Lifetime.ALWAYS else None,
                expires_at=until,
            )
            if mode is Mode.READ_WRITE:
                located.append(await self._stage_file(running, grant, copy_from_host=True))
                continue
            at = None if _under_any(request.path, running.anchors) else (
                Path(DOCUMENTS) / secrets.token_hex(4) / request.path.name
            )
            mirrored = await asyncio.to_thread(running.view.add, request.path, at)
            self.store.add_grants([grant], session=session, location=str(at) if at else None)
            inside = PurePosixPath(at or request.path)
            self.bus.emit(
                EventKind.GRANT_ADDED, session, str(request.path), grant=grant.id,
                mode=str(grant.mode), lifetime=str(grant.lifetime), location=str(inside),
                linked=mirrored.linked, copied=mirrored.copied,
            )
            for path, why in mirrored.skipped:
                self.bus.emit(EventKind.GRANT_SKIPPED, session, path, reason=why)
            if grant.expires_at is not None:
                self._schedule_expiry(running, grant)
            located.append(inside)
        return located

    async def save_files(
        self, session: str, targets: Sequence[Path], lifetime: Lifetime
    ) -> list[PurePosixPath]:
        running = self._running.get(session)
        if running is None:
            raise SessionError(f"session {session!r} is not running in this supervisor")
        located = []
        for target in targets:
            target = Path(os.path.abspath(target))
            if not target.parent.is_dir():
                raise GrantError(f"{target.parent}: no such folder to save into")
            if target.exists() and not target.is_file():
                raise GrantError(f"{target}: exists and is not a regular file")
            if target.is_symlink():
                raise GrantError(f"{target}: is a symlink; choose the real file")
            grant = grant_for(GrantRequest(target, Mode.READ_WRITE),
                              lifetime=Lifetime.SESSION if lifetime is Lifetime.ALWAYS
                              else lifetime, session=session,
                              expires_at=None)
            located.append(await self._stage_file(running, grant, copy_from_host=False))
        return located

    async def _stage_file(self, running: _Running, grant: Grant,
                          copy_from_host: bool) -> PurePosixPath:
        """A file the agent may write, staged in the session's saves area."""
        token = secrets.token_hex(4)
        await asyncio.to_thread(
            running.staging.add_file, grant.path, grant.id, running.quota,
            running.staging.root / "saves" / token, copy_from_host,
            (self.identity.uid, self.identity.gid))
        inside = PurePosixPath(SAVES) / token / grant.path.name
        self.store.add_grants([grant], session=running.id, location=str(inside))
        self.bus.emit(EventKind.GRANT_ADDED, running.id, str(grant.path), grant=grant.id,
                      mode=str(grant.mode), lifetime=str(grant.lifetime), location=str(inside))
        return inside

    def revoke(self, grant_ids: Sequence[str]) -> list[Grant]:
        """Revokes grants and takes them out of every running session that uses them.

        A read-only grant is a set of hard links in the session's view: they go, and with
        them every path to the host files. A read-write file's staged copy is moved out of
        the agent's reach, and kept for review. A read-write folder is an overlay mounted in
        the agent's container, which keeps whatever it looked up or copied up, and which
        the agent's working directory pins even if detached: no unprivileged way takes it
        back from a running agent. So revoking one stops the session (its agent killed at
        once); its staged changes stay for `airlock changes` and `commit`."""
        grants = [self.store.grant(grant_id) for grant_id in grant_ids]
        missing = [gid for gid, g in zip(grant_ids, grants, strict=True) if g is None]
        if missing:
            raise GrantError(f"no grant {missing[0]!r} (see `airlock grants`)")
        revoked = [g for g in grants if g is not None and g.revoked_at is None]
        self.store.revoke(g.id for g in revoked)
        now = time.time()
        for grant in revoked:
            for session in self.store.sessions_using(grant.id):
                record = self.store.session(session)
                if record is None or not record.live:
                    continue
                view = SessionView(self.dirs.sessions / session / "view")
                staging = SessionStaging(self.dirs.sessions / session / "staging", session)
                staging.withdraw(grant.id)
                if any(r.grant == grant.id and r.kind is RootKind.TREE
                       for r in staging.roots()):
                    request_stop(self.dirs.sessions, session,
                                 f"stopped: its read-write folder {grant.path} was revoked")
                    self._kill_agent(session)
                    view.remove(grant.path, keep=[Path(DOCUMENTS)])
                    self.bus.emit(EventKind.GRANT_REVOKED, session, str(grant.path),
                                  grant=grant.id, stopped=True,
                                  reason="a read-write folder cannot be taken back from a "
                                         "running agent: the session was stopped; its "
                                         "staged changes are kept for review")
                    continue
                location = self.store.grant_location(session, grant.id)
                if location is not None:
                    view.remove(Path(location), keep=[Path(DOCUMENTS)])
                    self.bus.emit(EventKind.GRANT_REVOKED, session, str(grant.path),
                                  grant=grant.id, location=location)
                    continue
                remaining = [g for g in self.store.session_grants(session, now)
                             if self.store.grant_location(session, g.id) is None]
                anchors = anchors_for((g.path, g.path.is_dir()) for g in [*remaining, grant])
                view.remove(grant.path, keep=[*anchors, Path(DOCUMENTS)])
                for other in remaining:
                    # A path also covered by another live grant stays visible.
                    if other.covers(grant.path) or grant.covers(other.path):
                        view.add(other.path)
                self.bus.emit(EventKind.GRANT_REVOKED, session, str(grant.path), grant=grant.id)
            if not self.store.sessions_using(grant.id):
                self.bus.emit(EventKind.GRANT_REVOKED, grant.session, str(grant.path),
                              grant=grant.id)
        return revoked


def _under_any(path: Path, anchors: Sequence[Path]) -> bool:
    return any(path == anchor or anchor in path.parents for anchor in anchors)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wait_delivered(delivered: concurrent.futures.Future[bool],
                    loop: asyncio.AbstractEventLoop) -> bool:
    """Waits, in the reading thread, for the loop to deliver a piece; whether to go on
    waiting for the next ones. Gives up if the loop stops meanwhile."""
    while True:
        try:
            return delivered.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            if loop.is_closed() or not loop.is_running():
                delivered.cancel()
                return False
        except concurrent.futures.CancelledError:
            return False


def _describe_exit(code: int) -> str:
    if code == 0:
        return "exited normally"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exited with status {code}"


def _limit_counter_files(pid: int) -> dict[str, Path]:
    """The cgroup files counting refused forks and memory-limit hits of a process (v1 or v2)."""
    counters: dict[str, Path] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return counters
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            counters.setdefault("pids", base / "pids.events")
            counters.setdefault("memory", base / "memory.events")
        elif "pids" in controllers.split(","):
            counters["pids"] = Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "pids.events"
        elif "memory" in controllers.split(","):
            counters["memory"] = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.failcnt"
    return {name: p for name, p in counters.items() if p.is_file()}


def _read_counter(path: Path) -> int | None:
    """`max N` (pids.events), `max N` in memory.events, or a bare number (memory.failcnt)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "max" and value.strip().isdigit():
            return int(value)
        if not value and key.strip().isdigit():
            return int(key)
    return 0

