"""How an agent container is configured: a pure function from profile and grants to the
engine's create arguments, so every hardening control is visible (and tested) in one place."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.console import Terminal
from app.gvisor import host_pids, is_gvisor
from app.profiles import Profile

NOBODY = 65534
LABEL_SESSION = "org.airlock.session"
LABEL_OWNER = "org.airlock.owner"
LABEL_SUPERVISOR = "org.airlock.supervisor"
LABEL_PROFILE = "org.airlock.profile"
LABEL_ROLE = "org.airlock.role"  # "agent", or the sidecar's job ("bridge")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T = TypeVar("T")
AGENT_HOME = "/home/airlock"  # the agent's HOME: writable, size-limited, programs may run there


def agents_first(containers: Iterable[T], labels: Callable[[T], Mapping[str, str]]) -> list[T]:
    """Containers in the order they can be removed: agents before the sidecars whose
    namespaces they joined (Podman refuses to remove a container others depend on)."""
    return sorted(containers, key=lambda c: labels(c).get(LABEL_ROLE, "agent") != "agent")


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid/gid the agent runs as: the user's own, so their files are readable."""

    uid: int
    gid: int

    @classmethod
    def for_caller(cls, environ: Mapping[str, str] | None = None) -> Identity:
        environ = os.environ if environ is None else environ
        if os.getuid() != 0:
            return cls(os.getuid(), os.getgid())
        # Run by root through sudo: the agent is the desktop user, never root.
        sudo_uid, sudo_gid = environ.get("SUDO_UID", ""), environ.get("SUDO_GID", "")
        if sudo_uid.isdigit() and sudo_gid.isdigit() and int(sudo_uid) != 0:
            return cls(int(sudo_uid), int(sudo_gid))
        return cls(NOBODY, NOBODY)


@dataclass(frozen=True, slots=True)
class BindMount:
    source: Path
    target: Path
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """A named engine volume: the overlay that stages a read-write directory grant."""

    volume: str
    target: Path


@dataclass(frozen=True, slots=True)
class ContainerAdditions:
    """What a session extension (the portal's bus, the egress bridge) adds to the agent's
    container. Its environment may set what profiles may not (the proxy, the bus address)."""

    mounts: tuple[BindMount, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    # "container:<id>": join a sidecar's namespace, which has loopback only, like "none".
    network_mode: str | None = None
    interfaces: tuple[str, ...] = ()  # in the shared namespace, besides loopback
    listening: tuple[int, ...] = ()  # loopback ports that answer there

    def __post_init__(self) -> None:
        if self.network_mode is not None and not self.network_mode.startswith("container:"):
            raise ValueError(
                f"an extension may only share a sidecar's network, not {self.network_mode!r}"
            )


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...]
    identity: Identity
    environment: Mapping[str, str]
    workdir: str
    mounts: tuple[BindMount, ...]
    volumes: tuple[VolumeMount, ...]
    labels: Mapping[str, str]
    memory: int
    nano_cpus: int
    pids: int
    tmpfs_size: int
    seccomp: str  # the profile's JSON text: the engine API takes content, not a path
    runtime: str | None
    network_mode: str = "none"
    home_size: int = 256 * 1024**2  # a fresh home's tmpfs, unless a mount brings one
    tty: bool = False  # a pseudo-terminal for the agent (app/console.py)
    stdin: bool = False  # its stdin is attached: the caller's keystrokes or pipe
    # The sandbox check's gate (app/sandbox.py) replaces the image's entrypoint; empty: the
    # image's own.
    entrypoint: tuple[str, ...] = ()
    # What the network namespace holds besides loopback (the witness's device) and which
    # loopback ports answer (the proxy): what the self-check expects to find there.
    interfaces: tuple[str, ...] = ()
    listening: tuple[int, ...] = ()

    def create_kwargs(self) -> dict[str, Any]:
        """Arguments for the engine API's container create: the container's own settings,
        and under `host_config` the settings the engine enforces from outside."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": list(self.command) or None,
            "name": self.name,
            "user": f"{self.identity.uid}:{self.identity.gid}",
            "environment": dict(self.environment),
            "working_dir": self.workdir,
            "labels": dict(self.labels),
            # Not detached when stdin is attached: docker-py then sets StdinOnce, and the end
            # of the caller's input is the end of the agent's (the engine closes the
            # container's stdin when the one attached client closes its side).
            "detach": not self.stdin,
            "stdin_open": self.stdin,
            "tty": self.tty,
            "host_config": self.host_config(),
        }
        if self.entrypoint:
            kwargs["entrypoint"] = list(self.entrypoint)
        if self.network_mode == "none":
            kwargs["hostname"] = "airlock"  # a shared namespace brings the sidecar's name
        return kwargs

    def host_config(self) -> dict[str, Any]:
        """Arguments for docker-py's `APIClient.create_host_config`."""
        from docker.types import Mount

        config: dict[str, Any] = {
            "network_mode": self.network_mode,  # none, or a sidecar's loopback-only namespace
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true", f"seccomp={self.seccomp}"],
            "pids_limit": self.pids,
            "mem_limit": self.memory,
            "memswap_limit": self.memory,  # no swap: the memory limit is the limit
            "nano_cpus": self.nano_cpus,
            "ipc_mode": "private",
            # The engine keeps no copy of what the agent prints (its log driver would, in
            # clear and without bound, under /var/lib/docker): the session reads the
            # attached streams, and records only fingerprints.
            "log_config": {"type": "none", "config": {}},
            "tmpfs": self.tmpfs(),
            "ulimits": _ulimits(),
            "mounts": [
                Mount(
                    target=str(mount.target),
                    source=str(mount.source),
                    type="bind",
                    read_only=mount.read_only,
                    propagation="rprivate",
                )
                for mount in self.mounts
            ]
            + [
                # no_copy: the engine must not seed the volume with the image's files.
                Mount(
                    target=str(mount.target),
                    source=mount.volume,
                    type="volume",
                    read_only=False,
                    no_copy=True,
                )
                for mount in self.volumes
            ],
            "init": True,  # reap zombies and forward signals to the agent
        }
        if self.runtime:
            config["runtime"] = self.runtime
        return config

    def tmpfs(self) -> dict[str, str]:
        """/tmp, where nothing runs, and a fresh home where programs may (agents unpack
        helpers and scripts there); both size-limited, and gone with the container."""
        mounts = {"/tmp": f"rw,nosuid,nodev,noexec,size={self.tmpfs_size}"}
        if not any(str(mount.target) == AGENT_HOME for mount in self.mounts):
            mounts[AGENT_HOME] = (
                f"rw,nosuid,nodev,exec,size={self.home_size},mode=0700,"
                f"uid={self.identity.uid},gid={self.identity.gid}"
            )
        return mounts


# Resource limits of the agent's processes: name → (soft, hard).
ULIMITS: Mapping[str, tuple[int, int]] = {"nofile": (4096, 4096), "core": (0, 0)}


def _ulimits() -> list[Any]:
    from docker.types import Ulimit

    return [Ulimit(name=name, soft=soft, hard=hard) for name, (soft, hard) in ULIMITS.items()]


def container_environment(profile: Profile, session: str) -> dict[str, str]:
    """A clean environment: nothing of the host's leaks in, only the profile's own variables
    and what Airlock sets."""
    environment = {
        "PATH": CONTAINER_PATH,
        "HOME": AGENT_HOME,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "AIRLOCK_SESSION": session,
    }
    environment.update(profile.env)
    return environment


def build_spec(
    *,
    profile: Profile,
    session: str,
    image: str,
    command: Sequence[str] | None,
    identity: Identity,
    anchors: Sequence[tuple[Path, Path]],
    first_grant: Path | None,
    seccomp: str,
    labels: Mapping[str, str],
    additions: Sequence[ContainerAdditions] = (),
    staged: Sequence[BindMount | VolumeMount] = (),
    terminal: Terminal | None = None,
) -> ContainerSpec:
    """`anchors` are (view directory on the host, path in the container) pairs, mounted
    read-only; `staged` are the writable places whose writes are staged."""
    environment = container_environment(profile, session)
    if terminal is not None:
        environment.update(terminal.environment())
    mounts = [BindMount(source, target) for source, target in anchors]
    mounts += [m for m in staged if isinstance(m, BindMount)]
    volumes = tuple(m for m in staged if isinstance(m, VolumeMount))
    network_mode = "none"
    interfaces: list[str] = []
    listening: list[int] = []
    for addition in additions:
        environment.update(addition.environment)
        mounts.extend(addition.mounts)
        interfaces.extend(addition.interfaces)
        listening.extend(addition.listening)
        if addition.network_mode:
            network_mode = addition.network_mode
    if profile.workdir:
        workdir = profile.workdir
    elif first_grant is not None:
        workdir = str(first_grant if first_grant.is_dir() else first_grant.parent)
    else:
        workdir = "/tmp"
    return ContainerSpec(
        name=f"airlock-{session}",
        image=image,
        command=tuple(command) if command else profile.command,
        identity=identity,
        environment=environment,
        workdir=workdir,
        mounts=tuple(mounts),
        volumes=volumes,
        labels=dict(labels),
        memory=profile.resources.memory,
        nano_cpus=int(profile.resources.cpus * 1e9),
        # gVisor's own threads share the cgroup's limit (app/gvisor.py).
        pids=host_pids(profile.resources.pids)
        if is_gvisor(profile.runtime)
        else profile.resources.pids,
        tmpfs_size=profile.resources.tmpfs,
        seccomp=seccomp,
        runtime=profile.runtime,
        network_mode=network_mode,
        home_size=profile.home.size,
        tty=terminal is not None and terminal.tty,
        stdin=terminal is not None,
        interfaces=tuple(interfaces),
        listening=tuple(listening),
    )
