"""Which container engine answers (Docker or Podman, rootful or rootless, which cgroup
version), read from its own version and info, and the places where Podman's Docker-compatible
API or rootless Docker must be told Airlock's container settings differently: pure functions,
tested by tables."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Podman's compat API reads `seccomp=` as a file name (Docker takes the profile's text).
SECCOMP_PREFIX = "seccomp="
# A rootless engine cannot make device nodes: its runtime binds the host's harmless ones.
ROOTLESS_DEVICES = frozenset(
    {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
)
# Files and mounts Podman adds to every container (besides the kernel's file systems): its
# init (catatonit), the passwd and group entries keep-id writes for the user, and the file
# that tells programs they run in a container. Bind mounts of files Podman generates; they
# are part of the engine, like Docker's /etc/hosts.
PODMAN_MOUNTS = (
    frozenset({"/run/podman-init", "/etc/passwd", "/etc/group", "/run/.containerenv"})
    | ROOTLESS_DEVICES
)
# With a read-only root, Podman mounts a tmpfs on /run and /var/tmp (exec-able, no size
# limit) unless the container brings its own; these are Airlock's, limited like /tmp.
PODMAN_TMPFS = {
    "/run": "rw,nosuid,nodev,noexec,size=1m,mode=0755",
    "/var/tmp": "rw,nosuid,nodev,noexec,size=1m,mode=1777",
}


# What Podman lists as dropped for `cap_drop=["ALL"]`: the capabilities it would otherwise
# grant (containers.conf's default_capabilities, Podman 4). The kernel's capability sets
# are checked as well, and must be empty whatever the engine says.
PODMAN_DEFAULT_CAPABILITIES = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)


@dataclass(frozen=True, slots=True)
class EngineKind:
    """The engine behind DOCKER_HOST, as its version and info describe it."""

    product: str  # "docker", "podman", or "" (neither says so)
    version: str = ""
    rootless: bool = False
    cgroup: str = ""  # "1", "2", or "" (not said)

    @property
    def podman(self) -> bool:
        return self.product == "podman"

    @property
    def rootless_docker(self) -> bool:
        """Docker run by the user (rootlesskit): every container is in the engine's one user
        namespace, whose root is the user and whose other uids are the user's sub-uids."""
        return self.product == "docker" and self.rootless

    def describe(self) -> str:
        """E.g. "rootless Podman 4.3.1 (cgroup v1)", "Docker 20.10.24"."""
        name = {"docker": "Docker", "podman": "Podman"}.get(self.product, "an unknown engine")
        text = f"{'rootless ' if self.rootless else ''}{name} {self.version}".rstrip()
        return f"{text} (cgroup v{self.cgroup})" if self.cgroup else text

    @property
    def limits_enforced(self) -> bool:
        """Whether memory, pids and CPU limits can hold: a rootless engine on cgroup v1 has
        no cgroup of its own to write them to, and Podman then drops them without an error."""
        return not (self.rootless and self.cgroup == "1")


DOCKER = EngineKind("docker")  # what the checks assume when nothing else is known
UNKNOWN = EngineKind("")  # not asked (yet)


def engine_kind(
    version: Mapping[str, Any], info: Mapping[str, Any], podman_rootless: bool | None = None
) -> EngineKind:
    """The engine from its `/version` and `/info` answers; `podman_rootless` is what
    Podman's own `/libpod/info` says (its compat `/info` does not say it)."""
    components = {
        str(c.get("Name", "")): str(c.get("Version", ""))
        for c in version.get("Components") or []
        if isinstance(c, Mapping)
    }
    cgroup = str(info.get("CgroupVersion") or "")
    if "Podman Engine" in components:
        return EngineKind("podman", components["Podman Engine"], bool(podman_rootless), cgroup)
    rootless = "name=rootless" in (info.get("SecurityOptions") or ())
    if "Engine" in components:
        return EngineKind("docker", components["Engine"], rootless, cgroup)
    return EngineKind("", str(version.get("Version") or ""), rootless, cgroup)


def podman_host_config(
    host_config: Mapping[str, Any], seccomp_file: str | None, userns: str
) -> dict[str, Any]:
    """A docker-py host config rewritten for Podman: the seccomp profile as `seccomp_file`
    (the file holding the same text), the user namespace `userns` ("keep-id": the agent's
    uid is the user's; "container:ID": the sidecar's, whose network it joins), and /run and
    /var/tmp as Airlock's own small noexec tmpfs instead of Podman's unlimited ones."""
    config = dict(host_config)
    options = []
    for option in config.get("SecurityOpt") or ():
        if option.startswith(SECCOMP_PREFIX):
            if seccomp_file is None:
                raise ValueError("a seccomp profile needs its file for Podman")
            option = SECCOMP_PREFIX + seccomp_file
        options.append(option)
    if options:
        config["SecurityOpt"] = options
    config["UsernsMode"] = userns
    config["Tmpfs"] = podman_tmpfs(config.get("Tmpfs") or {})
    return config


def rootless_docker_create(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Container create arguments rewritten for rootless Docker, which has no keep-id: the
    container's root is the user, so the agent runs as uid 0 there (with no capability, as
    everywhere) and its tmpfs home is root's; any other uid would be a sub-uid, owning what
    the agent writes where the user cannot remove it. Seen from the host, the agent's
    processes and files are still the user's uid — what the kernel check compares."""
    rewritten = dict(kwargs, user=f"{ROOTLESS_ROOT}:{ROOTLESS_ROOT}")
    host_config = dict(kwargs.get("host_config") or {})
    if host_config.get("Tmpfs"):
        host_config["Tmpfs"] = rootless_docker_tmpfs(host_config["Tmpfs"])
    rewritten["host_config"] = host_config
    return rewritten


ROOTLESS_ROOT = 0  # the container's uid and gid that are the user's under rootless Docker


def rootless_docker_tmpfs(tmpfs: Mapping[str, str]) -> dict[str, str]:
    """The tmpfs mounts with their owner given as the container's root (the user)."""

    def options(text: str) -> str:
        return ",".join(
            f"{o.partition('=')[0]}={ROOTLESS_ROOT}" if o.startswith(("uid=", "gid=")) else o
            for o in text.split(",")
        )

    return {target: options(text) for target, text in tmpfs.items()}


def podman_tmpfs(tmpfs: Mapping[str, str]) -> dict[str, str]:
    """The tmpfs mounts as Podman takes them: Airlock's /run and /var/tmp added, and a
    tmpfs's owner as "U" (the container's user; Podman refuses uid= and gid=)."""

    def options(text: str) -> str:
        kept = [o for o in text.split(",") if not o.startswith(("uid=", "gid="))]
        return ",".join([*kept, "U"]) if len(kept) < len(text.split(",")) else text

    return {target: options(text) for target, text in {**PODMAN_TMPFS, **tmpfs}.items()}


def podman_userns(network_mode: str) -> str:
    """The agent joins its sidecar's user namespace along with its network (Podman cannot
    share a network namespace across user namespaces); alone, it gets keep-id."""
    return network_mode if network_mode.startswith("container:") else "keep-id"


def seccomp_text(security_opt: Sequence[str]) -> str | None:
    """The seccomp profile's text in a `SecurityOpt` list, if any."""
    for option in security_opt:
        if option.startswith(SECCOMP_PREFIX):
            return option[len(SECCOMP_PREFIX) :]
    return None


def seccomp_name(text: str) -> str:
    """The file name a seccomp profile is written under for Podman: its digest, so the
    sandbox check can tell from the name alone that the file holds this profile."""
    return f"{hashlib.sha256(text.encode()).hexdigest()}.json"
