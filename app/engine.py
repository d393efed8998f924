"""The container engine: a Docker Engine API client, with failures turned into clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from app.engine_kind import (
    EngineKind,
    engine_kind,
    podman_host_config,
    podman_userns,
    seccomp_name,
    seccomp_text,
)
from app.errors import EngineError


def connect_engine(timeout: float = 60.0) -> docker.DockerClient:
    """Connect to the engine named by DOCKER_HOST (rootless Podman's socket works too),
    or the default socket, and check that it answers."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        # Each session keeps connections open for as long as it runs (its wait, its output
        # stream), beside the short calls of the others: a pool of urllib3's default 10 would
        # open and drop connections all the time once a few agents run.
        client = docker.from_env(timeout=int(timeout), max_pool_size=64)
        client.ping()
    except docker.errors.DockerException as e:
        raise EngineError(_explain(where, e)) from e
    except requests.exceptions.RequestException as e:
        raise EngineError(_explain(where, e)) from e
    return client


def _explain(where: str, error: Exception) -> str:
    text = str(error)
    if "Permission denied" in text or "PermissionError" in text:
        return (
            f"cannot reach the Docker engine at {where}: permission denied. "
            "Add yourself to the docker group (sudo usermod -aG docker $USER) and log in again."
        )
    if "No such file" in text or "FileNotFoundError" in text or "Connection refused" in text:
        return (
            f"no Docker engine is running at {where}. Start it (sudo systemctl start docker) "
            "or run `sudo packaging/setup demo`, which installs and starts one."
        )
    return f"the Docker engine at {where} did not answer: {text}"


def detect_engine(client: docker.DockerClient) -> EngineKind:
    """Which engine answers: its version and info, and for Podman its own info (only it
    says whether it runs rootless)."""
    try:
        version = client.version()
        info = client.info()
        rootless = None
        if any(c.get("Name") == "Podman Engine" for c in version.get("Components") or []):
            # Podman answers its own API under any version prefix, not without one.
            libpod = client.api.get(f"{client.api.base_url}/v4.0.0/libpod/info")
            libpod.raise_for_status()
            rootless = bool(
                ((libpod.json().get("host") or {}).get("security") or {}).get("rootless")
            )
    except (docker.errors.DockerException, requests.exceptions.RequestException, ValueError) as e:
        raise EngineError(f"the engine did not say what it is: {_first_line(e)}") from e
    return engine_kind(version, info, rootless)


def for_engine(
    kind: EngineKind, host_config: dict[str, Any], network_mode: str, runtime_dir: Path
) -> dict[str, Any]:
    """The host config as `kind` takes it: unchanged for Docker; for Podman, the seccomp
    profile written to a file (content-addressed under `runtime_dir`) and the user namespace
    that keeps the user's uid (see app/engine_kind.py)."""
    if not kind.podman:
        return host_config
    text = seccomp_text(host_config.get("SecurityOpt") or ())
    path = None if text is None else str(seccomp_file(text, runtime_dir))
    return podman_host_config(host_config, path, podman_userns(network_mode))


def seccomp_file(text: str, runtime_dir: Path) -> Path:
    """The profile's text in a file of the user's only, named by its digest (the sandbox
    check compares the name; the content is checked here, at each create, before the
    engine reads it)."""
    folder = runtime_dir / "seccomp"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / seccomp_name(text)
    try:
        same = path.read_text() == text
    except OSError:
        same = False
    if not same:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.chmod(0o600)
        partial.replace(path)
    return path


def one_line(text: str, limit: int = 300) -> str:
    """An engine's error message as one bounded line (Podman quotes a refused seccomp
    profile whole)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _first_line(error: Exception) -> str:
    return one_line(
        str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    )
