"""The reaper (app/reaper.py) against the real engine: when its supervisor's end of the pipe
closes without "done", the session's containers go; after "done", nothing is touched."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import docker
import pytest

from app.container import LABEL_ROLE
from app.engine import detect_engine, for_engine
from app.sessions.engine import Reaper

pytestmark = pytest.mark.docker


def labelled(engine: docker.DockerClient, image: str) -> tuple[str, list[str]]:
    label = f"org.airlock.test-reaper={secrets.token_hex(4)}"
    key, _, value = label.partition("=")
    container = engine.containers.create(image, ["sleep", "60"], labels={key: value})
    return str(container.id), [label]


def present(engine: docker.DockerClient, container: str) -> bool:
    return bool(engine.api.containers(all=True, filters={"id": container}))


def test_a_supervisor_gone_without_a_word_takes_its_session_s_containers_along(
    engine: docker.DockerClient, agent_image: str
) -> None:
    container, labels = labelled(engine, agent_image)
    reaper = Reaper(labels)
    stdin = reaper._process.stdin
    assert stdin is not None
    stdin.close()  # as the kernel does when the supervisor dies
    assert reaper._process.wait(timeout=30) == 0
    assert not present(engine, container)


def test_a_session_that_ended_as_usual_leaves_the_reaper_nothing_to_do(
    engine: docker.DockerClient, agent_image: str
) -> None:
    container, labels = labelled(engine, agent_image)
    try:
        reaper = Reaper(labels)
        reaper.done()
        deadline = time.monotonic() + 30
        while reaper._process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reaper._process.returncode == 0
        assert present(engine, container)
    finally:
        engine.api.remove_container(container, force=True)


def test_an_agent_and_the_sidecar_it_depends_on_both_go(
    engine: docker.DockerClient, agent_image: str, tmp_path: Path
) -> None:
    """The agent shares its sidecar's network (and under Podman its user namespace): Podman
    removes the sidecar only once the agent is gone. (Podman 4.3 lists the newest first, so
    this passes without the ordering too; `agents_first` is proven by its table.)"""
    kind = detect_engine(engine)
    label = f"org.airlock.test-reaper={secrets.token_hex(4)}"
    key, _, value = label.partition("=")

    def create(role: str, network: str) -> str:
        host = for_engine(
            kind, engine.api.create_host_config(network_mode=network), network, tmp_path
        )
        return str(
            engine.api.create_container(
                agent_image,
                ["sleep", "60"],
                labels={key: value, LABEL_ROLE: role},
                host_config=host,
            )["Id"]
        )

    sidecar = create("bridge", "none")
    engine.api.start(sidecar)
    agent = create("agent", f"container:{sidecar}")
    engine.api.start(agent)
    try:
        reaper = Reaper([label])
        stdin = reaper._process.stdin
        assert stdin is not None
        stdin.close()
        assert reaper._process.wait(timeout=60) == 0
        assert not present(engine, agent) and not present(engine, sidecar)
    finally:
        for container in (agent, sidecar):
            engine.api.remove_container(container, force=True) if present(
                engine, container
            ) else None
