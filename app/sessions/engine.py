"""The container engine as a session sees it: the `Engine` protocol, and `DockerEngine`, its
implementation over the Docker SDK (rootless Podman's socket works too).

Every call blocks: from the loop, call them through `asyncio.to_thread`. Engine failures come
out as `EngineError`/`ImageError`, never as the SDK's own exceptions, so nothing above this
module imports docker.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import requests.exceptions

from app.console import Console
from app.container import LABEL_OWNER, LABEL_ROLE, LABEL_SESSION
from app.engine import detect_engine, for_engine, one_line
from app.engine_kind import EngineKind, rootless_docker_create
from app.errors import EngineError, GrantError, ImageError
from app.gvisor import is_gvisor, registration_fix, registration_problem
from app.paths import Dirs
from app.profiles import Profile
from app.sandbox import EngineView, SandboxReport
from app.sessions.selfcheck import gvisor_report, kernel_report

log = logging.getLogger(__name__)

# One piece of the agent's output: (stdout, stderr), either may be empty.
Chunk = tuple[bytes | None, bytes | None]


@dataclass(frozen=True, slots=True)
class Listed:
    """A container or volume found by label: its id (or volume name) and labels."""

    id: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ContainerState:
    pid: int  # 0 when not running
    oom_killed: bool


class Guard(Protocol):
    """Removes a session's containers if its supervisor dies first (the reaper)."""

    def done(self) -> None:
        """The session ended as usual: nothing is left to remove."""


class Engine(Protocol):
    """What sessions need of a container engine. Blocking; ids are the engine's full ids."""

    def image_id(self, profile: Profile) -> str:
        """The id of the profile's image, checked against its pin and runtime; raises
        ImageError or EngineError saying what to do."""

    def image_command(self, image: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The image's own entrypoint and command (what the sandbox check's gate runs when
        the profile names no command)."""

    def report(self, container: str) -> SandboxReport:
        """What the engine's inspect and the kernel say of the running container, for the
        sandbox check (app/sandbox.py)."""

    def create(self, kwargs: dict[str, Any]) -> str:
        """Creates (does not start) a container from `ContainerSpec.create_kwargs()`."""

    def attach(self, container: str) -> Iterator[Chunk]:
        """The container's output streams, from before it starts; ends when they close.
        May raise EngineError, OSError or ValueError while being read."""

    def console(self, container: str, tty: bool) -> Console:
        """Stdin, stdout and stderr of the container as one connection (a terminal's raw
        stream when `tty`), from before it starts; its resizes."""

    def start(self, container: str) -> None: ...

    def state(self, container: str) -> ContainerState: ...

    def wait(self, container: str) -> int:
        """Waits for the container to exit; its exit status."""

    def stop(self, container: str, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""

    def kill(self, container: str) -> None:
        """SIGKILL now; a container that is gone or not running is no error."""

    def remove(self, container: str) -> bool:
        """Removes the container, running or not; True once it is gone."""

    def containers(self, labels: Sequence[str]) -> list[Listed]:
        """Containers, running or not, carrying all these labels (`key` or `key=value`)."""

    def create_volume(
        self, name: str, lower: Path, upper: Path, work: Path, labels: Mapping[str, str]
    ) -> str:
        """An overlay volume (read-write staging of a folder); its name."""

    def volumes(self, labels: Sequence[str]) -> list[Listed]: ...

    def remove_volumes(self, names: Sequence[str]) -> None:
        """Removes them; failures are logged, not raised (a sweep retries)."""

    def top(self, container: str) -> tuple[list[str], list[list[str]]]:
        """The container's process list: column titles and rows."""

    def guard(self, labels: Sequence[str]) -> Guard:
        """Something that removes the containers with these labels if this process dies
        before calling its `done`."""


class Reaper:
    """The supervisor's end of a session's reaper (app/reaper.py): the process that
    removes the containers with `labels` if this one dies before calling `done`."""

    def __init__(self, labels: Sequence[str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app.reaper", *labels],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # not ended by a Ctrl-C
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


class DockerEngine:
    """The `Engine` over a Docker SDK client."""

    def __init__(self, client: docker.DockerClient, runtime_dir: Path | None = None) -> None:
        self.client = client
        self._runtime_dir = runtime_dir
        self._kind: EngineKind | None = None

    @property
    def kind(self) -> EngineKind:
        """Which engine this is (asked once: two requests)."""
        if self._kind is None:
            self._kind = detect_engine(self.client)
        return self._kind

    @property
    def runtime_dir(self) -> Path:
        return self._runtime_dir or Dirs.for_user().runtime

    def image_id(self, profile: Profile) -> str:
        try:
            image = self.client.images.get(profile.image)
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
            runtimes = self.client.info().get("Runtimes", {})
            if is_gvisor(profile.runtime) and (why := registration_problem(runtimes)):
                raise EngineError(
                    f"profile {profile.name} runs under gVisor, but {why}: {registration_fix()}"
                )
            if profile.runtime not in runtimes:
                raise EngineError(
                    f"profile {profile.name} asks for runtime {profile.runtime!r}, which the "
                    f"engine does not have (it has: {', '.join(sorted(runtimes))}); install it "
                    "or remove `runtime` from the profile"
                )
        return image.id or profile.image

    def image_command(self, image: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        try:
            config = self.client.images.get(image).attrs.get("Config") or {}
        except docker.errors.APIError as e:
            raise EngineError(f"cannot inspect image {image}: {e.explanation}") from e
        return tuple(config.get("Entrypoint") or ()), tuple(config.get("Cmd") or ())

    def report(self, container: str) -> SandboxReport:
        try:
            doc = self.client.api.inspect_container(container)
        except docker.errors.APIError as e:
            raise EngineError(f"cannot inspect container {container[:12]}: {e.explanation}") from e
        view = EngineView.from_inspect(doc)
        full_id = str(doc.get("Id") or container)
        if is_gvisor(view.runtime):  # its first process is gVisor's, not the agent's
            return SandboxReport(
                view, kernel_report(0, full_id), self.kind, gvisor_report(view.pid, full_id)
            )
        return SandboxReport(view, kernel_report(view.pid, full_id), self.kind)

    def create(self, kwargs: dict[str, Any]) -> str:
        try:
            # The low-level call: `containers.create` would inspect the new container again.
            api = self.client.api
            host_config = for_engine(
                self.kind,
                api.create_host_config(**kwargs["host_config"]),
                kwargs["host_config"].get("network_mode", ""),
                self.runtime_dir,
            )
            kwargs = dict(kwargs, host_config=host_config)
            if self.kind.rootless_docker:
                kwargs = rootless_docker_create(kwargs)
            return str(api.create_container(**kwargs)["Id"])
        except docker.errors.APIError as e:
            raise EngineError(
                f"{self.kind.describe()} refused the container: {one_line(str(e.explanation))}"
            ) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
            raise EngineError(
                f"cannot create the container on {self.kind.describe()}: {one_line(str(e))}"
            ) from e

    def attach(self, container: str) -> Iterator[Chunk]:
        # Without `logs`: the engine keeps none (log driver "none"), and asking for them
        # stalls the attach.
        try:
            stream = self.client.api.attach(
                container, stdout=True, stderr=True, stream=True, logs=False, demux=True
            )
        except docker.errors.APIError as e:
            raise EngineError(
                f"cannot attach to container {container[:12]}: {e.explanation}"
            ) from e
        return self._read(stream)

    def console(self, container: str, tty: bool) -> Console:
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        try:
            raw = self.client.api.attach_socket(container, params=params)
        except docker.errors.APIError as e:
            raise EngineError(f"cannot attach to the agent's console: {e.explanation}") from e
        sock = getattr(raw, "_sock", raw)  # a SocketIO over the unix socket, or the socket
        if not isinstance(sock, socket.socket):
            raise EngineError("the engine's attach connection is not a socket")

        def resize(rows: int, cols: int) -> None:
            try:
                self.client.api.resize(container, height=rows, width=cols)
            except docker.errors.APIError as e:
                raise EngineError(f"cannot resize: {e.explanation}") from e

        return Console(sock, tty, resize, container, keep=raw)

    @staticmethod
    def _read(stream: Any) -> Iterator[Chunk]:
        try:
            yield from stream
        except docker.errors.APIError as e:
            raise EngineError(f"the output stream broke: {e.explanation}") from e

    def start(self, container: str) -> None:
        try:
            self.client.api.start(container)
        except docker.errors.APIError as e:
            raise EngineError(f"cannot start the container: {e.explanation}") from e

    def state(self, container: str) -> ContainerState:
        try:
            state = self.client.api.inspect_container(container).get("State") or {}
        except docker.errors.APIError as e:
            raise EngineError(f"cannot inspect container {container[:12]}: {e.explanation}") from e
        return ContainerState(int(state.get("Pid") or 0), bool(state.get("OOMKilled")))

    def wait(self, container: str) -> int:
        try:
            status = self.client.api.wait(container)
        except docker.errors.APIError as e:
            raise EngineError(f"cannot wait for container {container[:12]}: {e.explanation}") from e
        return int(status.get("StatusCode", 1))

    def stop(self, container: str, grace: float) -> None:
        try:
            self.client.api.stop(container, timeout=int(grace))
        except docker.errors.APIError as e:
            raise EngineError(f"cannot stop container {container[:12]}: {e.explanation}") from e

    def kill(self, container: str) -> None:
        try:
            self.client.api.kill(container)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # not running (yet, or any more)
            log.warning("cannot kill container %s: %s", container[:12], e.explanation)

    def remove(self, container: str) -> bool:
        try:
            self.client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log.warning("cannot remove container %s: %s", container[:12], e.explanation)
            return False
        return True

    def containers(self, labels: Sequence[str]) -> list[Listed]:
        try:
            found = self.client.api.containers(all=True, filters={"label": list(labels)})
        except docker.errors.APIError as e:
            raise EngineError(f"cannot list containers: {e.explanation}") from e
        return [Listed(c["Id"], c.get("Labels") or {}) for c in found or []]

    def create_volume(
        self, name: str, lower: Path, upper: Path, work: Path, labels: Mapping[str, str]
    ) -> str:
        for path in (lower, upper, work):
            if "," in str(path) or ":" in str(path):
                raise GrantError(
                    f"{path}: overlay mounts cannot take ',' or ':' in a path; point "
                    "XDG_STATE_HOME somewhere without them"
                )
        options = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr"
        try:
            volume = self.client.volumes.create(
                name=name,
                driver="local",
                labels=dict(labels),
                driver_opts={"type": "overlay", "device": "overlay", "o": options},
            )
        except docker.errors.APIError as e:
            raise EngineError(f"cannot create the staging overlay: {e.explanation}") from e
        return str(volume.name)

    def volumes(self, labels: Sequence[str]) -> list[Listed]:
        found = self.client.api.volumes(filters={"label": list(labels)})
        return [
            Listed(v["Name"], v.get("Labels") or {}) for v in (found or {}).get("Volumes") or []
        ]

    def remove_volumes(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                self.client.api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                log.warning("cannot remove volume %s: %s", name, e.explanation)

    def top(self, container: str) -> tuple[list[str], list[list[str]]]:
        try:
            top = self.client.api.top(container, ps_args="-o pid,user,etime,args")
        except docker.errors.APIError as e:
            raise EngineError(f"cannot list the processes: {e.explanation}") from e
        return list(top.get("Titles") or []), [list(p) for p in top.get("Processes") or []]

    def guard(self, labels: Sequence[str]) -> Guard:
        return Reaper(labels)


def session_containers(engine: Engine, owner: str, session: str | None = None) -> list[Listed]:
    """The containers of one session of `owner`'s (the agent's and its sidecars), or of all
    of them."""
    labels = [f"{LABEL_OWNER}={owner}", f"{LABEL_SESSION}={session}" if session else LABEL_SESSION]
    return engine.containers(labels)


def is_agent(container: Listed) -> bool:
    return container.labels.get(LABEL_ROLE, "agent") == "agent"


def kill_agent(engine: Engine, owner: str, session: str) -> None:
    """Kills the session's agent now (no grace: it must not read on); its supervisor then
    ends the session as usual."""
    for container in session_containers(engine, owner, session):
        if is_agent(container):
            engine.kill(container.id)
