"""The agent's home: writable, size-limited, where programs may run, never the user's; kept
per profile when the profile asks, invisible to other profiles, listed and removable, and
never holding a route's real key (checked by grepping the kept home)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import docker
import pytest
import trustme

from app.egress.bridge import Egress
from app.egress.keys import KeyringSecrets
from app.errors import SessionError
from app.events import EventBus
from app.homes import AgentHomes, homes_dir, kept_homes, remove_home
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import (
    DockerEngine,
    ExtensionFactory,
    LaunchRequest,
    SessionResult,
    Supervisor,
)
from app.store import StateStore
from tests.netsupport import RecordingServer, StaticResolver, ca, secret_service, trusted_context
from tests.support import CollectedOutput, profile_text

__all__ = ["ca", "secret_service"]
pytestmark = pytest.mark.docker

KEPT = '[home]\npersist = true\nsize = "8m"\n'


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    dirs = Dirs(config=tmp_path / "c", state=tmp_path / "s", runtime=tmp_path / "r")
    dirs.ensure()
    return dirs


def run(
    dirs: Dirs,
    engine: docker.DockerClient,
    text: str,
    extensions: list[ExtensionFactory] | None = None,
) -> tuple[SessionResult, str]:
    store = StateStore(dirs.database)
    supervisor = Supervisor(
        engine,
        store,
        EventBus(),
        dirs,
        ProfileCatalog(dirs.user_profiles),
        extensions=extensions or [AgentHomes(dirs, DockerEngine(engine))],
    )
    output = CollectedOutput()
    try:
        result = asyncio.run(
            supervisor.run(LaunchRequest(parse_profile(text, "t.toml"), Path("t.toml")), output)
        )
    finally:
        store.close()
    return result, output.text()


def named(text: str, name: str) -> str:
    return text.replace('name = "test-agent"', f'name = "{name}"')


def test_a_fresh_home_is_writable_runs_programs_and_has_a_size_limit(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str
) -> None:
    script = (
        'echo "home=$HOME"; printf "#!/bin/sh\\necho helper ran\\n" > ~/helper; '
        "chmod +x ~/helper && ~/helper; mkdir -p ~/.config ~/.cache && echo ok-config; "
        "dd if=/dev/zero of=$HOME/big bs=1M count=20 2>&1 | head -1; du -sm ~ | cut -f1"
    )
    text = profile_text(agent_image, ["sh", "-c", script]) + '[home]\nsize = "4m"\n'
    result, output = run(dirs, engine, text)
    assert result.exit_code == 0, output
    assert "home=/home/airlock" in output and "helper ran" in output and "ok-config" in output
    assert "No space left on device" in output
    assert int(output.strip().splitlines()[-1]) <= 4
    assert not homes_dir(dirs).exists()  # nothing kept


def test_a_kept_home_lasts_across_sessions_of_its_profile_only(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str
) -> None:
    first = (
        profile_text(
            agent_image,
            [
                "sh",
                "-c",
                "mkdir -p ~/.cache && echo kept > "
                '~/.cache/note && printf "#!/bin/sh\\necho tool ran\\n"'
                " > ~/tool && chmod +x ~/tool",
            ],
        )
        + KEPT
    )
    assert run(dirs, engine, first)[0].exit_code == 0
    again = profile_text(agent_image, ["sh", "-c", "cat ~/.cache/note; ~/tool"]) + KEPT
    result, output = run(dirs, engine, again)
    assert (result.exit_code, output) == (0, "kept\ntool ran\n")
    other = named(
        profile_text(agent_image, ["sh", "-c", "ls -A ~; cat ~/.cache/note"]) + KEPT, "other-agent"
    )
    result, output = run(dirs, engine, other)
    assert result.exit_code != 0 and "kept" not in output
    assert [(h.profile, h.size > 0) for h in kept_homes(dirs)] == [
        ("other-agent", False),
        ("test-agent", True),
    ]
    with pytest.raises(SessionError, match="is running"):
        remove_home(dirs, "test-agent", {"test-agent"})
    with pytest.raises(SessionError, match="not a profile name"):
        remove_home(dirs, "../c", set())
    remove_home(dirs, "test-agent", set())
    assert [h.profile for h in kept_homes(dirs)] == ["other-agent"]
    result, output = run(dirs, engine, again)
    assert "kept" not in output


def test_a_kept_home_over_its_limit_refuses_to_start(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str
) -> None:
    fill = profile_text(agent_image, ["sh", "-c", "head -c 9000000 /dev/zero > ~/fill"]) + KEPT
    run(dirs, engine, fill)
    with pytest.raises(SessionError, match="over its 8 MiB limit"):
        run(dirs, engine, fill)


def test_a_kept_home_never_holds_a_routes_key(
    dirs: Dirs,
    engine: docker.DockerClient,
    agent_image: str,
    ca: trustme.CA,
    secret_service: Any,
) -> None:
    key = "sk-live-" + "H7" * 20
    secrets = KeyringSecrets(dirs.config / "secrets")
    secrets.set("llm-key", key)
    cert = ca.issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    # The agent keeps everything it can see in its home: its environment, the route's
    # answers (the upstream echoes the credential back), whatever is under /run/airlock.
    script = (
        "env > ~/env; cat /proc/self/environ > ~/environ; "
        'curl -sS -i "$AIRLOCK_ROUTE_LLM/echo-auth" > ~/answer 2>&1; '
        "cp -r /run/airlock ~/run 2>/dev/null; cat ~/answer"
    )
    with RecordingServer(context) as upstream:
        egress = Egress(
            engine,
            secrets=secrets,
            broker=None,
            resolver=StaticResolver({"localhost": ["127.0.0.1"]}),
            tls=trusted_context(ca),
        )
        text = (
            profile_text(agent_image, ["sh", "-c", script])
            + KEPT
            + (
                '[network]\nallow_private = true\n[[network.routes]]\nname = "llm"\n'
                f'upstream = "https://localhost:{upstream.port}/v1"\nsecret = "llm-key"\n'
            )
        )
        result, output = run(dirs, engine, text, [AgentHomes(dirs, DockerEngine(engine)), egress])
    assert result.exit_code == 0, output
    assert [r["headers"]["authorization"] for r in upstream.seen.requests] == [f"Bearer {key}"]
    home = homes_dir(dirs) / "test-agent"
    assert (home / "answer").read_bytes() and (home / "env").read_bytes()
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert key.encode() not in path.read_bytes(), path
