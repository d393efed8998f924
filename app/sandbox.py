"""The sandbox self-check as pure functions: what a session's container must look like (from
its spec), the engine's inspect and the kernel's /proc text parsed into plain facts, and the
two compared, check by check.

Who is believed for what: the engine's inspect is the authority for what the engine was told
and says it applied (user, read-only root, capabilities, seccomp, no-new-privileges, limits,
mounts, network mode, runtime); the kernel, read from /proc of the container's first process
by the supervisor itself, for what is in force (CapEff and the other capability sets,
NoNewPrivs, Seccomp, uid, the mount table, interfaces, routes, listening sockets). Nothing the
image contains is asked: a lying binary in it cannot make a check pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.container import ULIMITS, ContainerSpec
from app.engine_kind import (
    DOCKER,
    PODMAN_DEFAULT_CAPABILITIES,
    PODMAN_MOUNTS,
    ROOTLESS_DEVICES,
    ROOTLESS_ROOT,
    EngineKind,
    podman_tmpfs,
    podman_userns,
    rootless_docker_tmpfs,
    seccomp_name,
)
from app.gvisor import RUNSC, RUNTIME_ARGS, SANDBOX_ARGV0, SANDBOX_EXECUTABLE

# The gate: the container's entrypoint waits for one line on a FIFO mounted read-only from the
# session's directory, and execs the agent's command only if that line is "go" — written once
# the checks passed. Plain `sh`, the one program nearly every image has (the checks
# themselves need nothing of the image).
GATE_DIR = "/run/airlock/gate"
GATE_FIFO = "go"
GATE_SCRIPT = (
    'IFS= read -r word < "$0" && [ "$word" = go ] && exec "$@"; '
    'echo "airlock: the sandbox check did not pass" >&2; exit 125'
)
GATE_CODE = 125
SECCOMP_FILTER = 2  # /proc/PID/status "Seccomp:": 0 off, 1 strict, 2 filter
# Mounts the engine makes for every container: the kernel's file systems (and Docker's masks
# under /proc and /sys, which only take away), the name files, and the init it injects.
ENGINE_MOUNTS = frozenset(
    {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/dev/shm",
        "/sys",
        "/dev/console",  # a terminal's, when the agent has one
        "/sys/fs/cgroup",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/etc/hosts",
        "/sbin/docker-init",
        "/usr/sbin/docker-init",
        "/dev/init",
    }
)
MASKED_UNDER = ("/proc/", "/sys/")


def gate_command(
    fifo: str, entrypoint: Sequence[str], command: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The container's entrypoint and command: the gate, then what the image and profile
    would have run (the image's entrypoint with the command as its arguments)."""
    return ["/bin/sh", "-c", GATE_SCRIPT, fifo], [*entrypoint, *command]


GATE_FIFO_PATH = f"{GATE_DIR}/{GATE_FIFO}"


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: what was asked for, what was found."""

    name: str
    expected: str
    found: str

    @property
    def passed(self) -> bool:
        return self.expected == self.found

    def describe(self) -> str:
        return f"{self.name}: expected {self.expected}, found {self.found}"


@dataclass(frozen=True, slots=True)
class MountFact:
    target: str
    read_only: bool
    kind: str  # "bind", "volume", "tmpfs" from the engine; the file system type from the kernel
    source: str = ""


@dataclass(frozen=True, slots=True)
class EngineView:
    """The engine's inspect of a container, reduced to what the check compares."""

    user: str
    read_only: bool
    privileged: bool
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    memory: int
    memory_swap: int
    nano_cpus: int
    pids: int
    network_mode: str
    runtime: str
    ipc_mode: str
    pid_mode: str
    userns_mode: str
    devices: int
    init: bool
    mounts: tuple[MountFact, ...]
    tmpfs: tuple[str, ...]
    entrypoint: tuple[str, ...]
    pid: int
    ulimits: tuple[str, ...] = ()  # "name=soft:hard", sorted
    tmpfs_options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_inspect(cls, doc: Mapping[str, Any]) -> EngineView:
        config = doc.get("Config") or {}
        host = doc.get("HostConfig") or {}
        state = doc.get("State") or {}
        mounts = tuple(
            MountFact(
                str(m.get("Destination", "")),
                not m.get("RW", True),
                str(m.get("Type", "")),
                str(m.get("Name") or m.get("Source") or ""),
            )
            for m in doc.get("Mounts") or []
        )
        return cls(
            user=str(config.get("User") or ""),
            read_only=bool(host.get("ReadonlyRootfs")),
            privileged=bool(host.get("Privileged")),
            cap_add=tuple(host.get("CapAdd") or ()),
            cap_drop=tuple(host.get("CapDrop") or ()),
            security_opt=tuple(host.get("SecurityOpt") or ()),
            memory=int(host.get("Memory") or 0),
            memory_swap=int(host.get("MemorySwap") or 0),
            nano_cpus=int(host.get("NanoCpus") or 0),
            pids=int(host.get("PidsLimit") or 0),
            network_mode=str(host.get("NetworkMode") or ""),
            runtime=str(host.get("Runtime") or ""),
            ipc_mode=str(host.get("IpcMode") or ""),
            pid_mode=str(host.get("PidMode") or ""),
            userns_mode=str(host.get("UsernsMode") or ""),
            devices=len(host.get("Devices") or ()),
            init=bool(host.get("Init")),
            mounts=mounts,
            tmpfs=tuple(sorted(host.get("Tmpfs") or {})),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            pid=int(state.get("Pid") or 0),
            ulimits=tuple(
                sorted(
                    f"{u.get('Name')}={u.get('Soft')}:{u.get('Hard')}"
                    for u in host.get("Ulimits") or []
                )
            ),
            tmpfs_options={str(k): str(v) for k, v in (host.get("Tmpfs") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """/proc/PID/status of one process of the container, as the kernel reports it."""

    pid: int
    uids: tuple[int, ...]
    gids: tuple[int, ...]
    capabilities: Mapping[str, int]  # CapInh, CapPrm, CapEff, CapBnd, CapAmb
    no_new_privs: int
    seccomp: int
    limits: Mapping[str, str] = field(default_factory=dict)  # "nofile": "4096:4096"

    @classmethod
    def parse(cls, pid: int, status: str, limits: str = "") -> ProcessFacts:
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

        def numbers(key: str) -> tuple[int, ...]:
            return tuple(int(n) for n in fields.get(key, "").split())

        capabilities: dict[str, int] = {
            key: int(fields[key].strip(), 16)
            for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
            if key in fields
        }
        return cls(
            pid,
            numbers("Uid"),
            numbers("Gid"),
            capabilities,
            int(fields.get("NoNewPrivs", "-1").strip() or -1),
            int(fields.get("Seccomp", "-1").strip() or -1),
            parse_limits(limits),
        )


# /proc/PID/limits rows by the names the engine API uses.
_LIMIT_ROWS = {"Max open files": "nofile", "Max core file size": "core"}


def parse_limits(text: str) -> dict[str, str]:
    """The limits Airlock sets, from /proc/PID/limits: name → "soft:hard"."""
    found = {}
    for line in text.splitlines():
        for row, name in _LIMIT_ROWS.items():
            if line.startswith(row):
                soft, hard = line[len(row) :].split()[:2]
                found[name] = f"{soft}:{hard}".replace("unlimited", "-1")
    return found


@dataclass(frozen=True, slots=True)
class Listener:
    protocol: str  # tcp, tcp6
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class KernelReport:
    """What the kernel says of the container: its processes, its mount table, and its network
    namespace (interfaces, the interfaces routes go through, listening sockets)."""

    processes: tuple[ProcessFacts, ...]
    mounts: tuple[MountFact, ...]
    interfaces: tuple[str, ...]
    route_devices: tuple[str, ...]
    listeners: tuple[Listener, ...]
    host_network: bool | None  # None: the namespace could not be compared


@dataclass(frozen=True, slots=True)
class GvisorProcess:
    """The host's view of a gVisor container's first process: runsc's sandbox (app/gvisor.py
    checks it in place of the kernel checks, which would read gVisor's /proc, not the
    agent's)."""

    executable: str  # the name /proc/PID/exe points at
    argv: tuple[str, ...]
    no_new_privs: int
    seccomp: int
    host_network: bool | None


@dataclass(frozen=True, slots=True)
class SandboxReport:
    engine: EngineView
    kernel: KernelReport
    kind: EngineKind = DOCKER  # which engine made the container: what it reports differs
    gvisor: GvisorProcess | None = None  # read when the engine ran it under runsc


def parse_mountinfo(text: str) -> tuple[MountFact, ...]:
    """The mount table; of mounts stacked on one point, the last (the one visible)."""
    found: dict[str, MountFact] = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 6 or not right:
            continue
        target = _unescape(fields[4])
        options = fields[5].split(",")
        found.pop(target, None)
        found[target] = MountFact(target, "ro" in options, right.split()[0])
    return tuple(found.values())


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(escaped, plain)
    return path


def parse_interfaces(net_dev: str) -> tuple[str, ...]:
    return tuple(
        sorted(line.split(":", 1)[0].strip() for line in net_dev.splitlines()[2:] if ":" in line)
    )


def parse_route_devices(route: str, ipv6_route: str) -> tuple[str, ...]:
    """The interfaces any route goes through (IPv4 table, then IPv6)."""
    devices = {line.split()[0] for line in route.splitlines()[1:] if line.split()}
    devices |= {line.split()[-1] for line in ipv6_route.splitlines() if len(line.split()) >= 10}
    return tuple(sorted(devices))


def parse_listeners(protocol: str, table: str) -> tuple[Listener, ...]:
    """Sockets in LISTEN state (st 0A) of /proc/net/tcp or tcp6."""
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":
            continue
        address, _, port = fields[1].rpartition(":")
        found.append(Listener(protocol, _address(address), int(port, 16)))
    return tuple(found)


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    # IPv6: four host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ":".join(words[i : i + 2].hex() for i in range(0, 16, 2))


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the session's container must look like, from the spec Airlock built."""

    spec: ContainerSpec
    entrypoint: tuple[str, ...]
    interfaces: tuple[str, ...] = ("lo",)  # and what the extensions add (the witness's TUN)
    listening: tuple[int, ...] = ()  # loopback ports that must answer (the proxy)


def check_sandbox(expected: Expectation, report: SandboxReport) -> list[Check]:
    """Every check, passed or not, in a fixed order: the engine's first, then the kernel's
    (under gVisor, the host's view of its sandbox: app/gvisor.py)."""
    engine = engine_checks(expected, report.engine, report.kind)
    if expected.spec.runtime == RUNSC:
        return engine + gvisor_checks(expected, report.gvisor)
    return engine + kernel_checks(expected, report.kernel, report.kind)


@dataclass(frozen=True, slots=True)
class EngineWords:
    """How an engine reports the same isolation: Docker says "" for a private pid and user
    namespace and "private" for a private IPC namespace; Podman says "private", names the
    user namespace it was given ("private" for keep-id, "container:ID" when shared) and
    "shareable" for a private IPC namespace. Podman also mounts /run and /var/tmp unless the
    container has them (Airlock gives it small noexec ones), and its init, passwd and group
    files."""

    ipc_mode: str
    pid_mode: str
    userns_mode: str
    tmpfs: tuple[str, ...]
    engine_mounts: frozenset[str]
    asked: Mapping[str, str]  # tmpfs target: the options Airlock gives it, as reported
    cap_drop: tuple[str, ...]
    seccomp: str  # the SecurityOpt value that means "the profile's filter"
    user: str  # the container's uid:gid that is the user's


def engine_words(kind: EngineKind, spec: ContainerSpec) -> EngineWords:
    asked = spec.tmpfs()
    user = f"{spec.identity.uid}:{spec.identity.gid}"
    if kind.rootless_docker:
        # The container's root is the user (app/engine_kind.py: rootless_docker_create).
        asked = rootless_docker_tmpfs(asked)
        user = f"{ROOTLESS_ROOT}:{ROOTLESS_ROOT}"
    if not kind.podman:
        return EngineWords(
            "private",
            "",
            "",
            tuple(sorted(asked)),
            ENGINE_MOUNTS | ROOTLESS_DEVICES if kind.rootless else ENGINE_MOUNTS,
            asked,
            ("ALL",),
            spec.seccomp,
            user,
        )
    # Podman takes the owner as "U" and does not report it back.
    asked = {target: text.replace(",U", "") for target, text in podman_tmpfs(asked).items()}
    userns = podman_userns(spec.network_mode)
    return EngineWords(
        "shareable",
        "private",
        "private" if userns == "keep-id" else userns,
        tuple(sorted(asked)),
        ENGINE_MOUNTS | PODMAN_MOUNTS,
        asked,
        PODMAN_DEFAULT_CAPABILITIES,
        seccomp_name(spec.seccomp),
        user,
    )


def _text(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def engine_checks(
    expected: Expectation, view: EngineView, kind: EngineKind = DOCKER
) -> list[Check]:
    spec = expected.spec
    words = engine_words(kind, spec)
    seccomp = [o.partition("=")[2] for o in view.security_opt if o.startswith("seccomp")]
    nnp = [o for o in view.security_opt if o.startswith("no-new-privileges")]

    def held(limit: int) -> str:
        # Rootless Docker on cgroup v1 reports the limits it was given and enforces none (a
        # 64 MiB container allocates 200 MiB): what it says is not what holds.
        return str(limit) if kind.limits_enforced else f"{limit}, not enforced"

    checks = [
        Check("engine: user", words.user, view.user),
        Check("engine: read-only root", "true", _text(view.read_only)),
        Check("engine: privileged", "false", _text(view.privileged)),
        Check(
            "engine: capabilities dropped",
            _text(list(words.cap_drop)),
            _text(sorted(view.cap_drop)),
        ),
        Check("engine: capabilities added", "[]", _text(list(view.cap_add))),
        Check(
            "engine: seccomp",
            "the profile's filter",
            "the profile's filter"
            if seccomp == [spec.seccomp]
            or (
                kind.podman and len(seccomp) == 1 and seccomp[0].rpartition("/")[2] == words.seccomp
            )
            else ("none" if not seccomp else f"{seccomp[0][:40]!r}"),
        ),
        Check(
            "engine: no-new-privileges",
            "true",
            _text(nnp in (["no-new-privileges:true"], ["no-new-privileges"])),
        ),
        Check("engine: memory limit", str(spec.memory), held(view.memory)),
        Check("engine: memory+swap limit", str(spec.memory), held(view.memory_swap)),
        Check("engine: cpus (nano)", str(spec.nano_cpus), held(view.nano_cpus)),
        Check("engine: pids limit", str(spec.pids), held(view.pids)),
        Check("engine: network mode", spec.network_mode, view.network_mode),
        Check("engine: ipc mode", words.ipc_mode, view.ipc_mode),
        Check("engine: pid mode", words.pid_mode, view.pid_mode),
        Check("engine: userns mode", words.userns_mode, view.userns_mode),
        Check("engine: devices", "0", str(view.devices)),
        Check("engine: init", "true", _text(view.init)),
        Check("engine: entrypoint", _text(list(expected.entrypoint)), _text(list(view.entrypoint))),
        Check(
            "engine: mounts",
            _text(_expected_engine_mounts(spec)),
            _text(sorted(_engine_mount(m) for m in view.mounts)),
        ),
        Check(
            "engine: tmpfs",
            _text(list(words.tmpfs)),
            _text(
                [
                    target
                    + _missing_options(
                        words.asked.get(target, ""), view.tmpfs_options.get(target, "")
                    )
                    for target in view.tmpfs
                ]
            ),
        ),
        Check("engine: ulimits", _text(_expected_ulimits()), _text(list(view.ulimits))),
    ]
    if spec.runtime:
        checks.append(Check("engine: runtime", spec.runtime, view.runtime))
    return checks


def _missing_options(asked: str, found: str) -> str:
    """What of the options asked for a tmpfs the engine does not report (an engine's own
    tmpfs, where Airlock asked for one, would lack noexec and the size)."""
    missing = [o for o in asked.split(",") if o and o not in found.split(",")]
    return f" (without {','.join(missing)})" if missing else ""


def _expected_ulimits() -> list[str]:
    return sorted(f"{name}={soft}:{hard}" for name, (soft, hard) in ULIMITS.items())


def _engine_mount(mount: MountFact) -> str:
    mode = "ro" if mount.read_only else "rw"
    return f"{mount.kind} {mount.source} {mount.target} {mode}"


def _expected_engine_mounts(spec: ContainerSpec) -> list[str]:
    mounts = [
        _engine_mount(MountFact(str(m.target), m.read_only, "bind", str(m.source)))
        for m in spec.mounts
    ]
    mounts += [
        _engine_mount(MountFact(str(v.target), False, "volume", v.volume)) for v in spec.volumes
    ]
    return sorted(mounts)


def kernel_checks(
    expected: Expectation, kernel: KernelReport, kind: EngineKind = DOCKER
) -> list[Check]:
    spec = expected.spec
    words = engine_words(kind, spec)
    checks = [
        Check(
            "kernel: the container's processes",
            "found",
            "found" if kernel.processes else "none (not running, or not in this pid namespace)",
        )
    ]
    for process in kernel.processes:
        who = f"kernel: pid {process.pid}"
        checks += [
            Check(f"{who} uid", _text([spec.identity.uid] * 4), _text(list(process.uids))),
            Check(f"{who} gid", _text([spec.identity.gid] * 4), _text(list(process.gids))),
            *(
                Check(f"{who} {name}", "0000000000000000", f"{value:016x}")
                for name, value in sorted(process.capabilities.items())
            ),
            Check(f"{who} capability sets read", "5", str(len(process.capabilities))),
            Check(f"{who} NoNewPrivs", "1", str(process.no_new_privs)),
            Check(f"{who} Seccomp", str(SECCOMP_FILTER), str(process.seccomp)),
            Check(
                f"{who} limits",
                _text({n: f"{s}:{h}" for n, (s, h) in sorted(ULIMITS.items())}),
                _text(dict(sorted(process.limits.items()))),
            ),
        ]
    checks += _mount_checks(spec, kernel.mounts, words)
    outside = sorted(set(kernel.route_devices) - set(expected.interfaces))
    checks += [
        Check(
            "kernel: interfaces", _text(sorted(expected.interfaces)), _text(list(kernel.interfaces))
        ),
        Check(
            "kernel: routes out",
            "none",
            ", ".join(f"through {d}" for d in outside) if outside else "none",
        ),
        Check(
            "kernel: listening sockets (the proxy answers, nothing else does)",
            _text([f"127.0.0.1:{port}" for port in sorted(expected.listening)]),
            _text(
                sorted(
                    f"{lst.address}:{lst.port}"
                    if lst.protocol == "tcp"
                    else f"[{lst.address}]:{lst.port}"
                    for lst in kernel.listeners
                )
            ),
        ),
        Check(
            "kernel: network namespace (no host socket reachable)",
            "not the host's",
            {True: "the host's", False: "not the host's", None: "not comparable"}[
                kernel.host_network
            ],
        ),
    ]
    return checks


def _mount_checks(
    spec: ContainerSpec, mounts: Sequence[MountFact], words: EngineWords
) -> list[Check]:
    found = {m.target: m for m in mounts}
    wanted: dict[str, bool] = {"/": True}  # target: read-only
    wanted.update({str(m.target): m.read_only for m in spec.mounts})
    wanted.update({str(v.target): False for v in spec.volumes})
    wanted.update({target: False for target in words.tmpfs})
    checks = []
    for target, read_only in sorted(wanted.items()):
        mount = found.get(target)
        checks.append(
            Check(
                f"kernel: mount {target}",
                "ro" if read_only else "rw",
                "absent" if mount is None else ("ro" if mount.read_only else "rw"),
            )
        )
    extra = sorted(
        target
        for target in found
        if target not in wanted
        and target not in words.engine_mounts
        and not target.startswith(MASKED_UNDER)
    )
    checks.append(
        Check("kernel: mounts beyond the grants", "none", _text(extra) if extra else "none")
    )
    return checks


def summary(checks: Sequence[Check]) -> str:
    """What the sessions list shows: "verified (N checks)", or the first failed check."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        return f"verified ({len(checks)} checks)"
    return f"refused: {failed[0].describe()}"


def gvisor_checks(expected: Expectation, process: GvisorProcess | None) -> list[Check]:
    """The host's side of a gVisor sandbox, in place of the kernel checks of a runc one:
    the container's first process must be runsc's sandbox, run with the arguments Airlock
    needs, itself filtered and without new privileges, in a network namespace not the
    host's. What runs inside is gVisor's; the engine checks say what it was told."""
    found = process is not None and process.executable == SANDBOX_EXECUTABLE
    checks = [
        Check(
            "gvisor: the container's first process is runsc's sandbox",
            SANDBOX_ARGV0,
            "none (not running, or not in this pid namespace)"
            if process is None
            else (process.argv[0] if process.argv else "?")
            + ("" if found else f" ({process.executable})"),
        )
    ]
    if process is None:
        return checks
    flags = _flags(process.argv)
    checks += [
        Check(f"gvisor: sandbox runs with {arg}", "yes", "yes" if arg in flags else "no")
        for arg in RUNTIME_ARGS
    ]
    checks += [
        Check("gvisor: sandbox NoNewPrivs", "1", str(process.no_new_privs)),
        Check(
            "gvisor: sandbox Seccomp (gVisor's own filter)",
            str(SECCOMP_FILTER),
            str(process.seccomp),
        ),
        Check(
            "gvisor: network namespace (no host socket reachable)",
            "not the host's",
            {True: "the host's", False: "not the host's", None: "not comparable"}[
                process.host_network
            ],
        ),
    ]
    return checks


def _flags(argv: Sequence[str]) -> set[str]:
    """runsc's global flags: those before its subcommand (`boot`), as written."""
    flags = set()
    for arg in argv[1:]:
        if not arg.startswith("-"):
            break
        flag = "--" + arg.lstrip("-")
        flags.add(flag.removesuffix("=true"))  # runsc writes a boolean flag as `--x=true`
    return flags
