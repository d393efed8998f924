"""Agent images: packages are used only when their integrity hash matches, the cache makes a
second fetch offline, and only the wanted members of a package reach the layer, root-owned,
with no link out of it. The built images themselves run in tests/ui/test_agents_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from app.agent_image import (
    AGENT_ROOT,
    AGENTS,
    Layer,
    NpmFile,
    add_npm_files,
    build_agent,
    cache_dir,
    fetch,
    machine,
)
from app.errors import ImageError
from tests.support import AIRLOCK


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class Registry(ThreadingHTTPServer):
    """Serves one tarball and counts the downloads."""

    def __init__(self, body: bytes) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

        super().__init__(("127.0.0.1", 0), Handler)
        self.body = body
        self.hits = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/pkg/-/pkg-1.0.0.tgz"


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = Registry(b"the real package bytes")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_download_that_does_not_match_its_hash_is_refused_and_not_kept(
    registry: Registry,
) -> None:
    wanted = integrity(b"what the lock file promised")
    with requests.Session() as session, pytest.raises(ImageError, match="does not match"):
        fetch(session, registry.url, wanted, "pkg", "1.0.0", print)
    assert not list(cache_dir().iterdir())


def test_the_cache_serves_a_second_fetch_offline_and_a_tampered_copy_is_fetched_again(
    registry: Registry,
) -> None:
    wanted = integrity(registry.body)
    lines: list[str] = []
    with requests.Session() as session:
        first = fetch(session, registry.url, wanted, "pkg", "1.0.0", lines.append)
        again = fetch(session, registry.url, wanted, "pkg", "1.0.0", lines.append, offline=True)
        assert registry.hits == 1 and first.path == again.path
        assert "downloaded" in lines[0] and "cached" in lines[1]
        first.path.write_bytes(b"tampered in the cache")
        with pytest.raises(ImageError, match="not in the cache"):
            fetch(session, registry.url, wanted, "pkg", "1.0.0", print, offline=True)
        fetch(session, registry.url, wanted, "pkg", "1.0.0", print)
    assert registry.hits == 2 and first.path.read_bytes() == registry.body


def npm_tarball(path: Path, members: dict[str, bytes | str]) -> Path:
    """A gzipped npm tarball: bytes are files, a str is a symlink's target."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                archive.addfile(info)
            else:
                info.size, info.mode, info.uid = len(content), 0o4755, 1000
                archive.addfile(info, io.BytesIO(content))
    return path


def layer_members(build: Any) -> dict[str, tarfile.TarInfo]:
    stream = io.BytesIO()
    layer = Layer(stream)
    build(layer)
    layer.close()
    stream.seek(0)
    with tarfile.open(fileobj=stream) as archive:
        return {m.name: m for m in archive.getmembers()}


def test_only_the_wanted_members_reach_the_layer_root_owned_and_without_links_out(
    tmp_path: Path,
) -> None:
    _, triple = machine()
    base = f"package/vendor/{triple}"
    tarball = npm_tarball(
        tmp_path / "codex.tgz",
        {
            f"{base}/bin/codex": b"\x7fELF codex",
            f"{base}/codex-path/rg": b"\x7fELF rg",
            f"{base}/codex-resources/voice/bin/host": b"\x7fELF voice",
            f"{base}/bin/escape": "../../../../../etc/shadow",
            f"{base}/bin/absolute": "/etc/shadow",
            f"{base}/bin/sibling": "codex",
            "package/README.md": b"not wanted",
        },
    )
    files = (
        NpmFile("package/vendor/{triple}", "vendor/{triple}", skip=("codex-resources/voice",)),
    )
    members = layer_members(lambda layer: add_npm_files(layer, "codex", files, tarball))
    home = f"{AGENT_ROOT.lstrip('/')}/codex/vendor/{triple}"
    regular = {name for name, m in members.items() if m.isfile()}
    assert regular == {f"{home}/bin/codex", f"{home}/codex-path/rg"}
    assert {name for name, m in members.items() if m.issym()} == {f"{home}/bin/sibling"}
    for member in members.values():
        assert (member.uid, member.gid) == (0, 0)
        assert member.mode & 0o7000 == 0  # no set-id bit comes from a package
    assert members[f"{home}/bin/codex"].mode == 0o755


def test_a_package_without_the_wanted_files_is_refused(tmp_path: Path) -> None:
    tarball = npm_tarball(tmp_path / "x.tgz", {"package/other": b"x"})
    with pytest.raises(ImageError, match="lacks package/claude"):
        layer_members(
            lambda layer: add_npm_files(
                layer, "claude-code", (NpmFile("package/claude", "bin/claude"),), tarball
            )
        )


@pytest.mark.parametrize(
    "agent, version, message",
    [
        ("nope", None, "no agent named 'nope'"),
        ("codex", "1.0; rm -rf /", "is not a package version"),
    ],
)
def test_bad_requests_are_refused_before_any_work(
    agent: str, version: str | None, message: str, engine: docker.DockerClient
) -> None:
    lines: list[str] = []
    with pytest.raises(ImageError, match=message):
        build_agent(engine, agent, version=version, say=lines.append)
    assert lines == []  # nothing was built or fetched


def test_every_agent_pins_its_packages_for_this_machine() -> None:
    arch, _ = machine()
    for spec in AGENTS.values():
        for package in spec.packages:
            assert package.pinned.get(arch, "").startswith("sha512-"), package.spec


@pytest.mark.parametrize("action", ["build", "show"])
def test_the_command_line_names_the_unknown_agent(action: str) -> None:
    result = subprocess.run(
        [str(AIRLOCK), "image", action, "--agent", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "no agent named 'nope'" in result.stderr
    assert "claude-code" in result.stderr and "Traceback" not in result.stderr
