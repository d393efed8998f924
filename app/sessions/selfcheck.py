"""The sandbox self-check's I/O: the gate that holds the agent's command until the check
passed, reading what the kernel says of a container from /proc, and running the check.
The comparisons themselves are app/sandbox.py's."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path

from app.sandbox import (
    Check,
    Expectation,
    GvisorProcess,
    KernelReport,
    ProcessFacts,
    SandboxReport,
    check_sandbox,
    parse_interfaces,
    parse_listeners,
    parse_mountinfo,
    parse_route_devices,
)

EXEC_WAIT_SECONDS = 5.0
MAX_CHILDREN = 8  # the gate right after start: the init and its one child, seldom more


class Gate:
    """A FIFO the container's entrypoint reads one word from: "go" lets the agent's command
    run. Held open for reading and writing here from the start, so the container's open never
    waits for a writer and the word waits in the pipe if the gate reads it late."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        directory.chmod(0o755)  # searchable by the agent's uid, which may not be ours
        self.directory = directory
        fifo = directory / "go"
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo, 0o644)
        fifo.chmod(0o644)  # the agent's uid reads it; nobody but us writes
        self._fd: int | None = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def open(self) -> None:
        """Lets the agent's command run."""
        if self._fd is not None:
            os.write(self._fd, b"go\n")

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _same_network(proc: Path) -> bool | None:
    """Whether the process shares our network namespace; None if that cannot be known.

    The engine's start returns once the runtime told its init to exec, which may not have
    happened yet: until then the process is the runtime's and not dumpable, its namespace
    links closed to us. So this waits for the exec — a millisecond or two — and the other
    facts are read after it, from the process that runs the gate."""
    deadline = time.monotonic() + EXEC_WAIT_SECONDS
    while True:
        try:
            return os.readlink(proc / "ns" / "net") == os.readlink("/proc/self/ns/net")
        except PermissionError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)
        except OSError:
            return None


def _conmon_child(proc: Path, container: str) -> bool:
    """Whether the process's parent is Podman's conmon for `container` (`conmon … -c ID`)."""
    argv = _read(Path("/proc") / _parent(proc) / "cmdline").split("\0")
    return (
        len(container) == 64
        and os.path.basename(argv[0]) == "conmon"
        and any(a == "-c" and b == container for a, b in itertools.pairwise(argv))
    )


def _shim_child(proc: Path, container: str) -> bool:
    """Whether the process's parent is containerd's shim for `container` (`… -id ID`): how
    rootless Docker runs it on cgroup v1, where no cgroup names the container."""
    argv = _read(Path("/proc") / _parent(proc) / "cmdline").split("\0")
    return (
        len(container) == 64
        and os.path.basename(argv[0]).startswith("containerd-shim")
        and any(a == "-id" and b == container for a, b in itertools.pairwise(argv))
    )


def _parent(proc: Path) -> str:
    """The parent's pid, as text ("0" if it cannot be read)."""
    fields = _read(proc / "stat").rpartition(")")[2].split()
    return fields[1] if len(fields) >= 2 and fields[1].isdigit() else "0"


def kernel_report(pid: int, container: str) -> KernelReport:
    """What the kernel says of the container whose first process is `pid` (in this process's
    pid namespace: a local engine). Blocking. Nothing in the container is run or asked."""
    proc = Path("/proc") / str(pid)
    # The pid is the engine's word: it must be the container's (its cgroup names it, or,
    # rootless on cgroup v1 where no cgroup does, its parent is the conmon or the containerd
    # shim that runs this container), or a remote engine's pid could point at a process of ours.
    if pid <= 0 or not (
        container in _read(proc / "cgroup")
        or _conmon_child(proc, container)
        or _shim_child(proc, container)
    ):
        return KernelReport((), (), (), (), (), None)
    host_network = _same_network(proc)
    pids = [pid]
    children = _read(proc / "task" / str(pid) / "children").split()
    pids += [int(child) for child in children[:MAX_CHILDREN] if child.isdigit()]
    processes = tuple(
        ProcessFacts.parse(p, status, _read(Path("/proc") / str(p) / "limits"))
        for p in pids
        if (status := _read(Path("/proc") / str(p) / "status"))
    )
    net = proc / "net"
    listeners = parse_listeners("tcp", _read(net / "tcp")) + parse_listeners(
        "tcp6", _read(net / "tcp6")
    )
    return KernelReport(
        processes=processes,
        mounts=parse_mountinfo(_read(proc / "mountinfo")),
        interfaces=parse_interfaces(_read(net / "dev")),
        route_devices=parse_route_devices(_read(net / "route"), _read(net / "ipv6_route")),
        listeners=listeners,
        host_network=host_network,
    )


def gvisor_report(pid: int, container: str) -> GvisorProcess | None:
    """The host's view of a gVisor container's first process (runsc's sandbox), or None if
    `pid` is not this container's. Blocking."""
    proc = Path("/proc") / str(pid)
    if pid <= 0 or container not in _read(proc / "cgroup"):
        return None
    host_network = _same_network(proc)
    try:
        executable = os.path.basename(os.readlink(proc / "exe"))
    except OSError:
        executable = ""
    status = ProcessFacts.parse(pid, _read(proc / "status"))
    argv = tuple(a for a in _read(proc / "cmdline").split("\0") if a)
    return GvisorProcess(executable, argv, status.no_new_privs, status.seccomp, host_network)


def run_checks(expected: Expectation, report: SandboxReport) -> tuple[list[Check], float]:
    """The checks and how long comparing took (seconds)."""
    started = time.perf_counter()
    checks = check_sandbox(expected, report)
    return checks, time.perf_counter() - started
