"""Codex's launch through Airlock: from `airlock run -p codex -- codex exec …` to its first
request at a mock of its model API, against a bare `docker run` of the same image with the
same command reaching the mock directly, interleaved in one run. Prints figures; asserts
nothing about time."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import platformdirs
import pytest

from app.agent_image import build_agent
from app.image import DEFAULT_IMAGE
from tests.agentmocks import MockModel, MockServer, OpenAIResponses
from tests.netsupport import secret_service
from tests.support import AIRLOCK
from tests.ui.test_agents_e2e import shipped_profile

__all__ = ["secret_service"]
RUNS = 3
COMMAND = ["codex", "exec", "--skip-git-repo-check", "Say hello."]
CACHE_HOME = str(platformdirs.user_cache_path("airlock").parent)


def until_first_request(model: MockModel, command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `command` to the mock's next request; then the command ends."""
    seen = len(model.arrived)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while len(model.arrived) == seen:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} ended first: {process.stderr.read()!r}")
            time.sleep(0.005)
        return model.arrived[seen] - started
    finally:
        process.wait(timeout=120)


@pytest.mark.bench
@pytest.mark.docker
def test_codex_first_request_through_airlock_vs_docker_run(
    engine: docker.DockerClient,
    tmp_path: Path,
    secret_service: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", CACHE_HOME)
    base = os.environ.get("AIRLOCK_AGENT_BASE", DEFAULT_IMAGE)
    image = build_agent(engine, "codex", base=base, offline=True).tag
    root = Path(tempfile.mkdtemp(prefix="ab-", dir="/tmp"))
    try:
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(root / "c"),
            "XDG_STATE_HOME": str(root / "s"),
            "XDG_RUNTIME_DIR": str(root / "r"),
        }
        (root / "r").mkdir(mode=0o700)
        subprocess.run(
            [str(AIRLOCK), "secret", "set", "openai"],
            input="sk-bench-key\n",
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        work = tmp_path / "project"
        work.mkdir()
        for folder in (tmp_path, work):
            folder.chmod(0o777)
        model = MockModel([])
        with MockServer(OpenAIResponses(), model) as mock:
            profile = root / "codex.toml"
            profile.write_text(shipped_profile("codex", mock.port))
            airlock = [
                str(AIRLOCK),
                "run",
                "-p",
                str(profile),
                "-g",
                f"{work}:rw",
                "--ask",
                "deny",
                "--",
                *COMMAND,
            ]
            bare = [
                "docker",
                "run",
                "--rm",
                "--network",
                "host",
                "--read-only",
                "--tmpfs",
                "/tmp",
                "-u",
                "65534:65534",
                "-w",
                str(work),
                "-v",
                f"{work}:{work}",
                "-e",
                "HOME=/tmp",
                "-e",
                f"AIRLOCK_ROUTE_OPENAI=http://127.0.0.1:{mock.port}",
                "-e",
                "OPENAI_API_KEY=sk-bench-key",
                image,
                *COMMAND,
            ]
            through, direct = [], []
            for _ in range(RUNS):
                direct.append(until_first_request(model, bare, env))
                through.append(until_first_request(model, airlock, env))
        print(
            f"\ncodex exec to its first model request (median of {RUNS}, interleaved): "
            f"docker run {statistics.median(direct):.2f} s "
            f"({', '.join(f'{t:.2f}' for t in direct)}); airlock run "
            f"{statistics.median(through):.2f} s "
            f"({', '.join(f'{t:.2f}' for t in through)}); "
            f"ratio {statistics.median(through) / statistics.median(direct):.2f}×"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
