"""The sandbox self-check against the real engine: an engine that breaks one layer of the
sandbox on purpose (and, in a second round, also hides it in its inspect) gets the session
refused with the check named, and the agent's command never runs; an honest session passes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import Mount

from app.audit import AuditLog, AuditRecord, Recorder, records
from app.delivery import SAVES
from app.engine import detect_engine
from app.errors import SandboxRefused
from app.events import Event, EventBus, EventKind
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sandbox import SandboxReport
from app.sessions import LaunchRequest, Supervisor
from app.sessions.engine import DockerEngine
from app.sessions.selfcheck import kernel_report
from app.store import StateStore
from tests.support import CollectedOutput, containers, profile_text

pytestmark = pytest.mark.docker

# The agent's command leaves a file in its saves area, which is staged on the host: if it is
# there after a refusal, the command ran.
MARKER = f"{SAVES}/ran"
COMMAND = ["sh", "-c", f"echo ran; echo ran > {MARKER}"]
Tamper = Callable[[dict[str, Any]], None]


class TamperingEngine(DockerEngine):
    """The real engine, with the container it creates altered by `tamper`; with `hide`, its
    inspect then reports what was asked for instead (an engine that lies about it)."""

    def __init__(
        self,
        client: docker.DockerClient,
        tamper: Tamper,
        hide: Callable[[SandboxReport, dict[str, Any]], SandboxReport] | None,
    ) -> None:
        super().__init__(client)
        self.tamper = tamper
        self.hide = hide
        self.asked: dict[str, Any] = {}

    def create(self, kwargs: dict[str, Any]) -> str:
        self.asked = {**kwargs, "host_config": dict(kwargs["host_config"])}
        altered = {**kwargs, "host_config": dict(kwargs["host_config"])}
        self.tamper(altered)
        return super().create(altered)

    def report(self, container: str) -> SandboxReport:
        report = super().report(container)
        return self.hide(report, self.asked) if self.hide else report


def _engine_field(**fields: Any) -> Callable[[SandboxReport, dict[str, Any]], SandboxReport]:
    def hide(report: SandboxReport, asked: dict[str, Any]) -> SandboxReport:
        values = {
            name: value(asked) if callable(value) else value for name, value in fields.items()
        }
        return dataclasses.replace(report, engine=dataclasses.replace(report.engine, **values))

    return hide


def add_capability(kwargs: dict[str, Any]) -> None:
    kwargs["host_config"]["cap_add"] = ["SYS_ADMIN"]


def unconfine(kwargs: dict[str, Any]) -> None:
    host = kwargs["host_config"]
    host["security_opt"] = [o for o in host["security_opt"] if not o.startswith("seccomp")] + [
        "seccomp=unconfined"
    ]


def writable_root(kwargs: dict[str, Any]) -> None:
    kwargs["host_config"]["read_only"] = False


def extra_mount(source: Path) -> Tamper:
    def tamper(kwargs: dict[str, Any]) -> None:
        kwargs["host_config"]["mounts"] = [
            *kwargs["host_config"]["mounts"],
            Mount(target="/extra", source=str(source), type="bind", read_only=False),
        ]

    return tamper


def other_network(helper: str) -> Tamper:
    def tamper(kwargs: dict[str, Any]) -> None:
        kwargs["host_config"]["network_mode"] = f"container:{helper}"
        kwargs.pop("hostname", None)  # a shared namespace brings its own

    return tamper


@pytest.fixture
def routed(engine: docker.DockerClient, agent_image: str) -> Iterator[str]:
    """A namespace with a route out: the witness's TUN device and its routes for every
    non-local destination, made by the witness's own code. Nothing is on the device's other
    end but this container's process, which never reads it: no packet leaves (and no bridge
    or uplink exists)."""
    script = (
        "import sys, socket, time; sys.path.insert(0, '/opt/airlock/agents'); "
        "import airlock_netlog as n; fd = n.open_tun(); "
        "n.configure(socket.if_nametoindex(n.DEVICE)); print('up', flush=True); "
        "time.sleep(600)"
    )
    container = engine.containers.run(
        agent_image,
        ["python3", "-I", "-S", "-c", script],
        detach=True,
        user="0:0",
        network_mode="none",
        cap_drop=["ALL"],
        cap_add=["NET_ADMIN"],
        devices=["/dev/net/tun:/dev/net/tun:rwm"],
        sysctls={"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0"},
        labels={"org.airlock.test": "selfcheck"},
    )
    try:
        for line in container.logs(stream=True, follow=True):
            if b"up" in line:
                break
        yield str(container.id)
    finally:
        container.remove(force=True)


def run_session(
    tmp_path: Path,
    engine: DockerEngine,
    image: str,
    extra: str = "",
    audit: AuditLog | None = None,
) -> tuple[Supervisor, list[Event], CollectedOutput, BaseException | None, str]:
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    store = StateStore(dirs.database)
    supervisor = Supervisor(engine, store, EventBus(), dirs, ProfileCatalog(dirs.user_profiles))
    events: list[Event] = []
    supervisor.bus.attach(events.append)
    if audit is not None:
        supervisor.bus.attach(Recorder(audit))
    request = LaunchRequest(
        parse_profile(profile_text(image, COMMAND, extra=extra), "test.toml"), Path("test.toml")
    )
    output = CollectedOutput()
    error: BaseException | None = None
    try:
        asyncio.run(supervisor.run(request, output))
    except SandboxRefused as e:
        error = e
    session = supervisor.last_session
    assert session is not None
    return supervisor, events, output, error, session


def assert_refused(
    tmp_path: Path,
    engine: DockerEngine,
    image: str,
    check: str,
    client: docker.DockerClient,
    extra: str = "",
) -> list[str]:
    """Asserts the refusal; every check that failed."""
    supervisor, events, output, error, session = run_session(tmp_path, engine, image, extra)
    assert error is not None, "the session was not refused"
    assert check in str(error)
    refused = [e for e in events if e.kind is EventKind.SANDBOX_REFUSED]
    assert len(refused) == 1 and refused[0].details["check"].startswith(check)
    assert "expected" in str(error) and "found" in str(error)
    assert EventKind.SESSION_STARTED not in [e.kind for e in events]
    # The agent's command never ran: nothing printed, nothing saved on the host.
    assert output.text("stdout") == ""
    assert not list((supervisor.dirs.sessions / session).rglob("ran"))
    record = supervisor.store.session(session)
    assert record is not None and record.sandbox is not None
    assert record.sandbox.startswith(f"refused: {check}")
    assert not containers(client, f"org.airlock.session={session}")
    supervisor.store.close()
    return list(refused[0].details["failed"])


def test_an_honest_session_passes_and_its_command_runs(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str
) -> None:
    supervisor, events, output, error, session = run_session(
        tmp_path, DockerEngine(engine), agent_image
    )
    assert error is None
    verified = [e for e in events if e.kind is EventKind.SANDBOX_VERIFIED]
    assert len(verified) == 1 and verified[0].details["checks"] >= 40
    kinds = [e.kind for e in events]
    assert kinds.index(EventKind.SANDBOX_VERIFIED) < kinds.index(EventKind.SESSION_STARTED)
    assert output.text("stdout") == "ran\n"
    assert list((supervisor.dirs.sessions / session).rglob("ran"))
    record = supervisor.store.session(session)
    assert record is not None
    assert record.sandbox == f"verified ({verified[0].details['checks']} checks)"
    supervisor.store.close()


CASES = {
    # name: (tamper, what the engine's inspect names, what the kernel names when hidden,
    #        how the inspect is made to hide it)
    "capability": (
        add_capability,
        "engine: capabilities added",
        "kernel: pid",
        _engine_field(cap_add=()),
    ),
    "seccomp": (
        unconfine,
        "engine: seccomp",
        "kernel: pid",
        _engine_field(security_opt=lambda asked: tuple(asked["host_config"]["security_opt"])),
    ),
    "writable root": (
        writable_root,
        "engine: read-only root",
        "kernel: mount /",
        _engine_field(read_only=True),
    ),
}


@pytest.mark.parametrize("hidden", [False, True], ids=["shown", "hidden"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_layer_refuses_the_session_naming_the_check(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str, case: str, hidden: bool
) -> None:
    tamper, by_engine, by_kernel, hide = CASES[case]
    wrapped = TamperingEngine(engine, tamper, hide if hidden else None)
    assert_refused(tmp_path, wrapped, agent_image, by_kernel if hidden else by_engine, engine)


@pytest.mark.parametrize("hidden", [False, True], ids=["shown", "hidden"])
def test_an_extra_mount_refuses_the_session(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str, hidden: bool
) -> None:
    source = tmp_path / "extra"
    source.mkdir()

    def hide(report: SandboxReport, asked: dict[str, Any]) -> SandboxReport:
        mounts = tuple(m for m in report.engine.mounts if m.target != "/extra")
        return dataclasses.replace(report, engine=dataclasses.replace(report.engine, mounts=mounts))

    wrapped = TamperingEngine(engine, extra_mount(source), hide if hidden else None)
    assert_refused(
        tmp_path,
        wrapped,
        agent_image,
        "kernel: mounts beyond the grants" if hidden else "engine: mounts",
        engine,
    )


@pytest.mark.parametrize("hidden", [False, True], ids=["shown", "hidden"])
def test_a_network_with_a_route_out_refuses_the_session(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str, routed: str, hidden: bool
) -> None:
    wrapped = TamperingEngine(
        engine, other_network(routed), _engine_field(network_mode="none") if hidden else None
    )
    failed = assert_refused(
        tmp_path,
        wrapped,
        agent_image,
        "kernel: interfaces" if hidden else "engine: network mode",
        engine,
    )
    assert any(
        f.startswith("kernel: routes out: expected none, found through airlock0") for f in failed
    ), failed


@pytest.fixture
def entrypoint_image(engine: docker.DockerClient, agent_image: str) -> Iterator[str]:
    """The agent image with an entrypoint of its own, as user images often have."""
    tag = "airlock-test-entrypoint:selfcheck"
    container = engine.containers.create(agent_image, ["true"])
    try:
        container.commit(
            repository=tag.split(":")[0],
            tag=tag.split(":")[1],
            changes=[
                'ENTRYPOINT ["/bin/sh", "-c", "echo \\"entrypoint $*\\"; exec \\"$@\\"", "ep"]'
            ],
        )
    finally:
        container.remove(force=True)
    yield tag
    engine.images.remove(tag, force=True)


def test_the_gate_keeps_the_images_entrypoint(
    tmp_path: Path, engine: docker.DockerClient, entrypoint_image: str
) -> None:
    _, _, output, error, _ = run_session(tmp_path, DockerEngine(engine), entrypoint_image)
    assert error is None
    assert output.text("stdout") == f"entrypoint {' '.join(COMMAND)}\nran\n"


def test_an_engine_that_drops_the_limits_is_caught(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str
) -> None:
    """What rootless Podman on cgroup v1 does: the container runs, without its limits."""

    def drop_limits(kwargs: dict[str, Any]) -> None:
        for limit in ("mem_limit", "memswap_limit", "pids_limit", "nano_cpus"):
            kwargs["host_config"].pop(limit)

    wrapped = TamperingEngine(engine, drop_limits, None)
    failed = assert_refused(tmp_path, wrapped, agent_image, "engine: memory limit", engine)
    assert [f.split(":")[1].strip() for f in failed] == [
        "memory limit",
        "memory+swap limit",
        "cpus (nano)",
        "pids limit",
    ]


def drop_all_limits(kwargs: dict[str, Any]) -> None:
    """What rootless Podman on cgroup v1 does: no memory, pids or CPU limit, no ulimits."""
    for limit in ("mem_limit", "memswap_limit", "pids_limit", "nano_cpus", "ulimits"):
        kwargs["host_config"].pop(limit)


ACCEPT_LIMITS = '[sandbox]\naccept_weaker = ["limits"]\n'


def test_a_refusal_for_limits_alone_says_how_to_accept_them(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str
) -> None:
    _, _, _, error, _ = run_session(
        tmp_path, TamperingEngine(engine, drop_all_limits, None), agent_image
    )
    assert error is not None
    assert 'a profile can accept running without them: [sandbox] accept_weaker = ["limits"]' in (
        str(error)
    )


def test_accepted_dropped_limits_run_with_the_warning_everywhere(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str
) -> None:
    """A profile that accepts the limits runs where the engine drops them, and says so: the
    event (the terminal's and the app's feed), the session's record (the sessions list and
    the tray) and the audit log name the engine and every accepted difference."""
    with AuditLog(tmp_path / "audit") as audit:
        supervisor, events, output, error, session = run_session(
            tmp_path,
            TamperingEngine(engine, drop_all_limits, None),
            agent_image,
            ACCEPT_LIMITS,
            audit,
        )
    assert error is None
    assert output.text("stdout") == "ran\n"
    verified = [e for e in events if e.kind is EventKind.SANDBOX_VERIFIED]
    assert len(verified) == 1
    details = verified[0].details
    assert details["weaker"] == ["limits"]
    accepted = [a.partition(": expected")[0] for a in details["accepted"]]
    assert accepted[:5] == [
        "engine: memory limit",
        "engine: memory+swap limit",
        "engine: cpus (nano)",
        "engine: pids limit",
        "engine: ulimits",
    ]
    assert all(a.startswith("kernel: pid ") and a.endswith(" limits") for a in accepted[5:])
    assert details["engine"] == detect_engine(engine).describe()
    assert details["warning"] == (
        f"weaker than asked: {details['engine']} does not enforce memory, pids and CPU "
        "limits and ulimits (accepted by the profile: [sandbox] accept_weaker)"
    )
    record = supervisor.store.session(session)
    assert record is not None and record.sandbox is not None
    assert record.sandbox.startswith(details["warning"] + "; ")
    assert record.sandbox.endswith(
        f"{details['checks'] - len(accepted)} of {details['checks']} checks passed"
    )
    supervisor.store.close()
    logged = [
        r
        for r in records(tmp_path / "audit")
        if isinstance(r, AuditRecord) and r.kind == "sandbox.verified"
    ]
    assert len(logged) == 1
    assert logged[0].details["weaker"] == ["limits"]
    assert logged[0].details["accepted"] == details["accepted"]
    assert logged[0].details["warning"] == details["warning"]


def test_accepting_the_limits_accepts_nothing_else(
    tmp_path: Path, engine: docker.DockerClient, agent_image: str
) -> None:
    """An engine that drops the limits and also adds a capability is refused, though the
    profile accepts the limits: the capability is named first."""

    def weaker_and_more(kwargs: dict[str, Any]) -> None:
        drop_all_limits(kwargs)
        add_capability(kwargs)

    failed = assert_refused(
        tmp_path,
        TamperingEngine(engine, weaker_and_more, None),
        agent_image,
        "engine: capabilities added",
        engine,
        ACCEPT_LIMITS,
    )
    assert any(f.startswith("engine: memory limit") for f in failed)


def test_a_pid_that_is_not_the_containers_is_not_read() -> None:
    """The engine's pid is read only if the kernel ties it to the container: its cgroup, or
    (rootless on cgroup v1) its parent Podman's conmon for that container. A process of
    ours, named with a container id, is neither."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (os.getpid(), child.pid):
            report = kernel_report(pid, "0123456789abcdef" * 4)
            assert report.processes == () and report.mounts == ()
    finally:
        child.kill()
        child.wait()
