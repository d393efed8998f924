"""The egress session extension's own parts (app/egress/bridge.py): what the agent's
environment says about the proxy and the routes, the sidecar's command, and the granted
files' fingerprints rebuilt as grants come and go. The extension itself, with its sidecar,
runs in every real session of tests/ui/test_egress_escapes.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import app.egress.bridge
from app.egress.bridge import (
    PROXY_PORT,
    SOCKET_DIR,
    WITNESS,
    ViewContent,
    proxy_environment,
    sidecar_command,
)
from app.profiles import parse_profile

URL = f"http://127.0.0.1:{PROXY_PORT}"


def test_the_agent_is_pointed_at_the_proxy_and_each_route_gets_a_variable() -> None:
    profile = parse_profile(
        'name = "t"\nimage = "i"\n[[network.routes]]\nname = "open-ai.v1"\n'
        'upstream = "https://api.example.com/v1"\nsecret = "openai"\n',
        "t.toml",
    )
    environment = proxy_environment(profile)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert environment[name] == URL
    assert environment["NO_PROXY"] == environment["no_proxy"] == "localhost,127.0.0.1,::1"
    assert environment["AIRLOCK_ROUTE_OPEN_AI_V1"] == f"{URL}/routes/open-ai.v1"
    assert "openai" not in "".join(environment.values())  # the secret's name, let alone it


@pytest.mark.parametrize("proxied", [True, False])
def test_the_sidecar_drops_to_the_agents_ids_and_listens_only_when_proxied(
    proxied: bool,
) -> None:
    command = sidecar_command(1000, 1001, proxied)
    assert command[:4] == ["python3", "-I", "-S", WITNESS]
    assert command[command.index("--uid") + 1] == "1000"
    assert command[command.index("--gid") + 1] == "1001"
    assert command[command.index("--report") + 1] == f"{SOCKET_DIR}/netlog.sock"
    assert ("--listen" in command) is proxied and ("--hand-over" in command) is proxied
    if proxied:
        assert command[command.index("--listen") + 1] == f"127.0.0.1:{PROXY_PORT}"


def test_the_granted_files_fingerprints_are_rebuilt_after_the_refresh_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "home" / "u").mkdir(parents=True)
    (tmp_path / "home" / "u" / "a.txt").write_text("granted at the start\n")
    content = ViewContent(tmp_path)

    async def run() -> None:
        first = await content.current()
        assert first.files == ("/home/u/a.txt",)
        (tmp_path / "home" / "u" / "b.txt").write_text("granted mid-run\n")
        assert await content.current() is first  # not read again at every upload
        monkeypatch.setattr(app.egress.bridge, "GRANTED_REFRESH_SECONDS", -1.0)
        assert sorted((await content.current()).files) == ["/home/u/a.txt", "/home/u/b.txt"]

    asyncio.run(run())
