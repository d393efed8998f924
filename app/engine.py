"""The container engine: a Docker Engine API client, with failures turned into clear errors."""

from __future__ import annotations

import os

import docker
import docker.errors
import requests.exceptions

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
