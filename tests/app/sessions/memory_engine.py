"""An in-memory container engine: a small class implementing app.sessions.engine.Engine, for
fast lifecycle tests beside the real-engine ones. Its "agent" is a Python function run in a
thread when the container starts; what it writes comes out of `attach`, its return value is
the exit status, unless the container is stopped (143) or killed (137) first."""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.console import Console
from app.errors import ImageError
from app.profiles import Profile
from app.sandbox import EngineView, KernelReport, MountFact, ProcessFacts, SandboxReport
from app.sessions.engine import Chunk, ContainerState, Guard, Listed

KILLED = 137
STOPPED = 143


@dataclass
class MemoryContainer:
    id: str
    labels: dict[str, str]
    kwargs: dict[str, Any]
    status: str = "created"  # created, running, exited
    exit_code: int | None = None
    oom_killed: bool = False
    signalled: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    chunks: queue.Queue[Chunk | None] = field(default_factory=queue.Queue)

    def write(self, stream: str, data: bytes) -> None:
        self.chunks.put((data, None) if stream == "stdout" else (None, data))

    def wait_for_signal(self, timeout: float = 30) -> bool:
        """What an agent that runs until stopped does: True once stopped or killed."""
        return self.signalled.wait(timeout)

    def end(self, code: int) -> None:
        if self.exited.is_set():
            return
        self.exit_code = code
        self.status = "exited"
        self.chunks.put(None)
        self.exited.set()


Agent = Callable[[MemoryContainer], int]


@dataclass
class MemoryGuard:
    labels: tuple[str, ...]
    ended: bool = False

    def done(self) -> None:
        self.ended = True


class MemoryEngine:
    def __init__(self, agent: Agent, images: Sequence[str] = ("agent:test",)) -> None:
        self.agent = agent
        self.images = set(images)
        self.containers_by_id: dict[str, MemoryContainer] = {}
        self.volume_labels: dict[str, dict[str, str]] = {}
        self.guards: list[MemoryGuard] = []
        self.calls: list[tuple[str, str]] = []  # (call, container id) in order
        self._lock = threading.Lock()

    def image_id(self, profile: Profile) -> str:
        if profile.image not in self.images:
            raise ImageError(
                f"image {profile.image} is not in the engine; build it with `airlock image build`"
            )
        return f"sha256:{profile.image}"

    def image_command(self, image: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (), ("/bin/sh",)

    def report(self, container: str) -> SandboxReport:
        """What an honest engine on an honest kernel reports: the spec, as asked for."""
        return honest_report(self.containers_by_id[container].kwargs)

    def create(self, kwargs: dict[str, Any]) -> str:
        container = MemoryContainer(secrets.token_hex(32), dict(kwargs.get("labels") or {}), kwargs)
        with self._lock:
            self.containers_by_id[container.id] = container
        self.calls.append(("create", container.id))
        return container.id

    def attach(self, container: str) -> Iterator[Chunk]:
        found = self.containers_by_id[container]

        def read() -> Iterator[Chunk]:
            while (chunk := found.chunks.get()) is not None:
                yield chunk

        return read()

    def console(self, container: str, tty: bool) -> Console:
        # Interactive sessions are tested against the real engine, through a real pty
        # (tests/ui/test_interactive.py): a fake terminal would prove nothing.
        raise NotImplementedError("the in-memory engine has no console")

    def start(self, container: str) -> None:
        found = self.containers_by_id[container]
        found.status = "running"
        self.calls.append(("start", container))
        threading.Thread(target=lambda: found.end(self.agent(found)), daemon=True).start()

    def state(self, container: str) -> ContainerState:
        found = self.containers_by_id[container]
        return ContainerState(0, found.oom_killed)

    def wait(self, container: str) -> int:
        found = self.containers_by_id[container]
        found.exited.wait()
        assert found.exit_code is not None
        return found.exit_code

    def _signal(self, container: str, code: int) -> None:
        found = self.containers_by_id.get(container)
        if found is None or found.status != "running":
            return
        found.signalled.set()
        found.end(code)

    def stop(self, container: str, grace: float) -> None:
        self.calls.append(("stop", container))
        self._signal(container, STOPPED)

    def kill(self, container: str) -> None:
        self.calls.append(("kill", container))
        self._signal(container, KILLED)

    def remove(self, container: str) -> bool:
        self.calls.append(("remove", container))
        self._signal(container, KILLED)
        with self._lock:
            self.containers_by_id.pop(container, None)
        return True

    def containers(self, labels: Sequence[str]) -> list[Listed]:
        with self._lock:
            found = list(self.containers_by_id.values())
        return [Listed(c.id, c.labels) for c in found if _carries(c.labels, labels)]

    def create_volume(
        self, name: str, lower: Path, upper: Path, work: Path, labels: Mapping[str, str]
    ) -> str:
        self.volume_labels[name] = dict(labels)
        return name

    def volumes(self, labels: Sequence[str]) -> list[Listed]:
        return [
            Listed(name, found)
            for name, found in self.volume_labels.items()
            if _carries(found, labels)
        ]

    def remove_volumes(self, names: Sequence[str]) -> None:
        for name in names:
            self.volume_labels.pop(name, None)

    def top(self, container: str) -> tuple[list[str], list[list[str]]]:
        return ["PID", "CMD"], [
            ["1", " ".join(self.containers_by_id[container].kwargs["command"] or [])]
        ]

    def guard(self, labels: Sequence[str]) -> Guard:
        guard = MemoryGuard(tuple(labels))
        self.guards.append(guard)
        return guard


def _carries(labels: Mapping[str, str], wanted: Sequence[str]) -> bool:
    for label in wanted:
        key, has_value, value = label.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def honest_report(kwargs: dict[str, Any]) -> SandboxReport:
    host = kwargs["host_config"]
    mounts = tuple(
        MountFact(m["Target"], bool(m["ReadOnly"]), m["Type"], m["Source"]) for m in host["mounts"]
    )
    engine = EngineView(
        user=kwargs["user"],
        read_only=host["read_only"],
        privileged=False,
        cap_add=(),
        cap_drop=tuple(host["cap_drop"]),
        security_opt=tuple(host["security_opt"]),
        memory=host["mem_limit"],
        memory_swap=host["memswap_limit"],
        nano_cpus=host["nano_cpus"],
        pids=host["pids_limit"],
        network_mode=host["network_mode"],
        runtime=host.get("runtime", "runc"),
        ipc_mode=host["ipc_mode"],
        pid_mode="",
        userns_mode="",
        devices=0,
        init=host["init"],
        mounts=mounts,
        tmpfs=tuple(sorted(host["tmpfs"])),
        entrypoint=tuple(kwargs.get("entrypoint") or ()),
        pid=0,
        ulimits=tuple(sorted(f"{u['Name']}={u['Soft']}:{u['Hard']}" for u in host["ulimits"])),
        tmpfs_options=dict(host["tmpfs"]),
    )
    uid, gid = (int(n) for n in kwargs["user"].split(":"))
    process = ProcessFacts(
        2,
        (uid,) * 4,
        (gid,) * 4,
        dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0),
        1,
        2,
        {u["Name"]: f"{u['Soft']}:{u['Hard']}" for u in host["ulimits"]},
    )
    kernel_mounts = (
        MountFact("/", True, "overlay"),
        *(MountFact(m.target, m.read_only, "bind") for m in mounts),
        *(MountFact(target, False, "tmpfs") for target in host["tmpfs"]),
    )
    return SandboxReport(engine, KernelReport((process,), kernel_mounts, ("lo",), (), (), False))
