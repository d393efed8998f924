"""Agent images: a real agent's pinned package, Airlock's MCP server and the agent's start
script, added as one layer on top of the base image, without a registry or network in the
container.

Each package comes from its own registry (npm's tarballs, PyPI's wheels) at a pinned version
and is checked against its integrity hash before a byte of it is used; downloads are kept in
the user's cache, so a repeat build, or a CI run with that cache, fetches nothing. The layer
is a tar stream handed to the engine (`put_archive` into a created, never started container,
then `commit`), and the image's labels say exactly what went in.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import io
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import platformdirs
import requests
import requests.exceptions

from app.errors import EngineError, ImageError
from app.image import AGENT_USER, DEFAULT_IMAGE, RECIPE_LABEL, Recipe, build

log = logging.getLogger(__name__)

Say = Callable[[str], None]

NPM_REGISTRY = "https://registry.npmjs.org"
AGENT_ROOT = "/opt/airlock/agent"
MCP_ROOT = "/opt/airlock/mcp"
LABEL_AGENT = "org.airlock.agent"
LABEL_VERSION = "org.airlock.agent.version"
LABEL_PACKAGES = "org.airlock.agent.packages"
LABEL_BASE = "org.airlock.base"
# Bump when the layer's layout changes in a way the recipe fields do not capture.
LAYER_VERSION = 2
IMAGE_PYTHON = (3, 11)  # bookworm's python3
DOWNLOAD_TIMEOUT = 60.0
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class NpmFile:
    """Members of an npm tarball to install: `source` (a path or folder under `package/`)
    lands at `target` under the agent's folder; `skip` are folders under `source` left out."""

    source: str
    target: str
    skip: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NpmPackage:
    """One npm tarball of an agent: `spec` is NAME@VERSION ({arch}: x64 or arm64; {version}:
    the agent's version, for the agent's own packages), `files` what of it is installed."""

    spec: str
    files: tuple[NpmFile, ...]
    # Integrity of the tarball at the default version, per architecture: what the build
    # trusts without asking the registry. Another --version takes the registry's word (TLS).
    pinned: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    package: str  # what users know it by, for messages
    default_version: str
    packages: tuple[NpmPackage, ...]
    links: tuple[str, ...]  # commands on PATH that run the start script
    check: tuple[str, ...]  # a command that must succeed in the image
    # A Python agent: its PyPI name, installed with its lock file (profiles/locks/AGENT.txt)
    # into the agent's folder, lib/.
    pypi: str | None = None


# Node for the agents that need it (Gemini CLI wants >= 20; bookworm has 18), from the npm
# registry's build of the official binaries: the machine reaches no other source of them.
NODE = NpmPackage(
    "node-linux-{arch}@22.23.5",
    (NpmFile("package/bin/node", "node/bin/node"),),
    pinned={
        "x64": "sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0c"
        "JqybFPEb5hhcBiMw==",
        "arm64": "sha512-e1LOUGKVruPGuLVutn8+Cgm5pI1APm4Kvh+zbb/qe/ZpD9s+TQby5iUgZOWmPpbSKpj0T"
        "d8DP1N0NEnXasHizg==",
    },
)

# One bundle for every machine.
GEMINI_CLI = (
    "sha512-dbQ9A0qBtFJNi6XBkHvfZ6Azpn6PNgH/P8h2MZ67RLlX8hSAVjup39CRWqdRxZv7YXIuhr"
    "Faytr8y0jKnkoxnQ=="
)

AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec(
            name="claude-code",
            package="@anthropic-ai/claude-code",
            default_version="2.1.332",
            # The native build: the main package only downloads it in a postinstall script.
            packages=(
                NpmPackage(
                    "@anthropic-ai/claude-code-linux-{arch}@{version}",
                    (NpmFile("package/claude", "bin/claude"),),
                    pinned={
                        "x64": "sha512-f4JWhzwYutJIHScC7/dYOPX6s28tt7ZADhsOi8zwOHq5fFPEuUeChh2NM"
                        "finSg0GrUckYxaeebC4h0DqiKzLcw==",
                        "arm64": "sha512-BlHNEtK38KBPWU31F4lUSS9sHclCyfWbThT1CErvxxH8+XcljYLZlQwd"
                        "yXBkTD62rw1TgfE1u1a+quMWS0NSJg==",
                    },
                ),
            ),
            links=("/usr/local/bin/claude",),
            check=("claude", "--version"),
        ),
        AgentSpec(
            name="codex",
            package="@openai/codex",
            default_version="0.171.0",
            # The native build for musl, with its helpers, run without the Node launcher of the
            # main package; the voice host (gstreamer, 50 MB) serves a desktop feature a
            # sandboxed terminal agent has no use for.
            packages=(
                NpmPackage(
                    "@openai/codex@{version}-linux-{arch}",
                    (
                        NpmFile(
                            "package/vendor/{triple}",
                            "vendor/{triple}",
                            skip=("codex-resources/voice",),
                        ),
                    ),
                    pinned={
                        "x64": "sha512-l66NZkQgdk2C3pbcfULDz42yEUB581MVA6I+Y43Wp4OIqEy73HCdmZ0GT"
                        "jeAHY2ycuH4N00d9VsLrwT1jxshTw==",
                        "arm64": "sha512-9z17t4bbUJ9UCIb49O4PoA+ki+45q3rd8nZ8PeH6sYnlKkBld/Xpo/OS"
                        "3h3Ti954+foshX4o7k5TCU8N7zzqQA==",
                    },
                ),
            ),
            links=("/usr/local/bin/codex",),
            check=("codex", "--version"),
        ),
        AgentSpec(
            name="gemini-cli",
            package="@google/gemini-cli",
            default_version="0.61.0",
            # One bundle with no required dependencies (keytar and node-pty are optional).
            packages=(
                NpmPackage(
                    "@google/gemini-cli@{version}",
                    (NpmFile("package", "gemini-cli"),),
                    pinned=dict.fromkeys(("x64", "arm64"), GEMINI_CLI),
                ),
                NODE,
            ),
            links=("/usr/local/bin/gemini",),
            check=("gemini", "--version"),
        ),
        AgentSpec(
            name="aider",
            package="aider-chat",
            default_version="0.86.2",
            packages=(),
            pypi="aider-chat",
            links=("/usr/local/bin/aider",),
            check=("aider", "--version"),
        ),
    )
}

ARCHES = {
    "x86_64": ("x64", "x86_64-unknown-linux-musl"),
    "amd64": ("x64", "x86_64-unknown-linux-musl"),
    "aarch64": ("arm64", "aarch64-unknown-linux-musl"),
    "arm64": ("arm64", "aarch64-unknown-linux-musl"),
}


@dataclass(frozen=True, slots=True)
class Fetched:
    """A package tarball in the cache, its integrity checked."""

    name: str
    version: str
    integrity: str
    path: Path


@dataclass(frozen=True, slots=True)
class AgentBuild:
    tag: str
    agent: str
    version: str
    packages: tuple[Fetched, ...]
    size: int
    built: bool


def agent_tag(agent: str) -> str:
    return f"airlock-agent:{agent}"


def cache_dir() -> Path:
    return platformdirs.user_cache_path("airlock") / "packages"


def machine() -> tuple[str, str]:
    found = platform.machine().lower()
    if found not in ARCHES:
        raise ImageError(f"no agent builds for this machine's architecture ({found})")
    return ARCHES[found]


# --- the registries -------------------------------------------------------------------------


def _get_json(session: requests.Session, url: str) -> Any:
    try:
        reply = session.get(url, timeout=DOWNLOAD_TIMEOUT, headers={"Accept": "application/json"})
    except requests.exceptions.RequestException as e:
        raise ImageError(f"cannot reach {urllib.parse.urlsplit(url).netloc}: {e}") from e
    if reply.status_code == 404:
        raise ImageError(f"{url}: not found in the registry")
    if reply.status_code != 200:
        raise ImageError(f"{url}: the registry answered {reply.status_code}")
    return reply.json()


def npm_manifest(session: requests.Session, name: str, version: str) -> dict[str, Any]:
    quoted = name.replace("/", "%2f")
    manifest = _get_json(session, f"{NPM_REGISTRY}/{quoted}/{urllib.parse.quote(version)}")
    if not isinstance(manifest, dict) or "dist" not in manifest:
        raise ImageError(f"{name}@{version}: the registry's answer has no tarball")
    return manifest


def check_integrity(path: Path, integrity: str) -> bool:
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha512", "sha384", "sha256"):
        raise ImageError(f"unsupported integrity algorithm {algorithm!r}")
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode() == expected


def fetch(
    session: requests.Session,
    url: str,
    integrity: str,
    name: str,
    version: str,
    say: Say,
    *,
    offline: bool = False,
) -> Fetched:
    """The tarball at `url`, from the cache when its hash matches, else downloaded."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(integrity.encode()).hexdigest()[:32]
    path = folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{version}-{key}.tgz"
    if path.is_file() and check_integrity(path, integrity):
        say(f"      {name}@{version}: cached ({path.stat().st_size / 1e6:.0f} MB)")
        return Fetched(name, version, integrity, path)
    if offline:
        raise ImageError(f"{name}@{version} is not in the cache ({folder}) and --offline was given")
    started = time.monotonic()
    partial = path.with_suffix(".part")
    try:
        with session.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as reply:
            if reply.status_code != 200:
                raise ImageError(f"{url}: the registry answered {reply.status_code}")
            with partial.open("wb") as out:
                for chunk in reply.iter_content(CHUNK):
                    out.write(chunk)
    except requests.exceptions.RequestException as e:
        partial.unlink(missing_ok=True)
        raise ImageError(f"cannot download {name}@{version}: {e}") from e
    if not check_integrity(partial, integrity):
        partial.unlink(missing_ok=True)
        raise ImageError(
            f"{name}@{version}: the download does not match its integrity hash "
            f"{integrity[:24]}…; refusing it"
        )
    partial.replace(path)
    say(
        f"      {name}@{version}: downloaded {path.stat().st_size / 1e6:.0f} MB in "
        f"{time.monotonic() - started:.1f} s"
    )
    return Fetched(name, version, integrity, path)


def fetch_agent(
    spec: AgentSpec, version: str, say: Say, *, offline: bool = False
) -> tuple[Fetched, ...]:
    arch, _ = machine()
    fetched = []
    with requests.Session() as session:
        for package in spec.packages:
            name, _, package_version = package.spec.format(arch=arch, version=version).rpartition(
                "@"
            )
            follows = "{version}" in package.spec
            integrity = (
                package.pinned.get(arch)
                if (version == spec.default_version or not follows)
                else None
            )
            if integrity is None:
                # Not pinned: the registry's own hash, over TLS, and checked on the download.
                if offline:
                    raise ImageError(
                        f"{name}@{package_version} is not pinned; it needs the "
                        "registry (drop --offline)"
                    )
                manifest = npm_manifest(session, name, package_version)
                integrity = str(manifest["dist"].get("integrity", ""))
                if not integrity.startswith("sha512-"):
                    raise ImageError(
                        f"{name}@{package_version}: the registry gives no sha512 "
                        "integrity hash; refusing it"
                    )
            url = npm_tarball_url(name, package_version)
            fetched.append(
                fetch(session, url, integrity, name, package_version, say, offline=offline)
            )
    return tuple(fetched)


def npm_tarball_url(name: str, version: str) -> str:
    base = name.rpartition("/")[2]
    return f"{NPM_REGISTRY}/{name}/-/{base}-{version}.tgz"


# --- the MCP server's Python packages ---------------------------------------------------------


def lock_file(name: str) -> bytes:
    """A pinned, hash-checked requirements file from `profiles/locks/`."""
    return (importlib.resources.files("profiles") / "locks" / f"{name}.txt").read_bytes()


def mcp_requirements() -> bytes:
    return lock_file("mcp")


def mcp_sources() -> dict[str, bytes]:
    folder = importlib.resources.files("profiles") / "mcp"
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".py")
    }


def start_script(agent: str) -> bytes:
    """The agent's start script: it writes the agent's configuration for Airlock's route and
    MCP server into $HOME, then runs the agent; the agent's own command names it."""
    script = importlib.resources.files("profiles") / "start" / f"{agent}.sh"
    if not script.is_file():
        raise ImageError(f"no start script for {agent} in the `profiles` package")
    return script.read_bytes()


def install_python_packages(
    requirements: bytes,
    target: Path,
    what: str,
    say: Say,
    *,
    hashed: bool = True,
    offline: bool = False,
) -> None:
    """pip installs wheels for the image's Python (3.11, glibc) into `target`: from a lock
    file with every hash checked (`hashed`), or, for a version we did not pin, as PyPI
    resolves it. Wheels are kept in the user's cache, so a second build is offline."""
    wheels = platformdirs.user_cache_path("airlock") / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="airlock-pip-") as scratch:
        listed = Path(scratch) / "requirements.txt"
        listed.write_bytes(requirements)
        arch = "x86_64" if machine()[0] == "x64" else "aarch64"
        select = [
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            f"manylinux2014_{arch}",
            "--platform",
            f"manylinux_2_17_{arch}",
            "--platform",
            f"manylinux_2_28_{arch}",
            "-r",
            str(listed),
        ]
        if hashed:
            select += ["--require-hashes", "--no-deps"]
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        started = time.monotonic()
        if not offline:
            _pip([*pip, "download", "-d", str(wheels), *select], what)
        _pip(
            [
                *pip,
                "install",
                "--no-index",
                "--find-links",
                str(wheels),
                "--no-compile",
                "--target",
                str(target),
                *select,
            ],
            what,
        )
        # pip's console scripts name this machine's Python; the image's start scripts run
        # the packages with the image's own.
        shutil.rmtree(target / "bin", ignore_errors=True)
        # The image's file system is read-only, so Python cannot cache bytecode there: without
        # it, importing the MCP SDK takes seconds. Hash-checked bytecode does not depend on
        # the files' times, which the layer does not keep.
        if sys.version_info[:2] == IMAGE_PYTHON:
            _pip(
                [
                    sys.executable,
                    "-m",
                    "compileall",
                    "-q",
                    "-j",
                    "0",
                    "--invalidation-mode",
                    "unchecked-hash",
                    str(target),
                ],
                what,
            )
        else:
            log.warning(
                "this Python is not %d.%d: %s is not precompiled, and starts slower",
                what,
                *IMAGE_PYTHON,
            )
        count = sum(
            1
            for line in requirements.decode().splitlines()
            if "==" in line and not line.lstrip().startswith("#")
        )
        say(f"      {what}: {count} packages installed in {time.monotonic() - started:.1f} s")


def _pip(command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or e.stdout or "no output").strip().splitlines()
        raise ImageError(f"pip could not install {what}: {lines[-1]}") from e
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"pip took over 10 minutes for {what}") from e


# --- the layer --------------------------------------------------------------------------------


class Layer:
    """A tar stream of root-owned entries, written to a file."""

    def __init__(self, stream: IO[bytes]) -> None:
        # Closed by close(), once every entry is in: the layer is written across calls.
        self.tar = tarfile.open(  # noqa: SIM115
            fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT
        )
        self.folders: set[str] = set()
        self.size = 0

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type = kind
        info.mode = mode
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    def folder(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for end in range(1, len(parts) + 1):
            path = "/".join(parts[:end])
            if path not in self.folders:
                self.folders.add(path)
                self.tar.addfile(self._info(path, tarfile.DIRTYPE, 0o755))

    def file(self, name: str, stream: IO[bytes], size: int, *, executable: bool) -> None:
        self.folder(name.rpartition("/")[0])
        info = self._info(name, tarfile.REGTYPE, 0o755 if executable else 0o644)
        info.size = size
        self.tar.addfile(info, stream)
        self.size += size

    def data(self, name: str, content: bytes, *, executable: bool) -> None:
        self.file(name, io.BytesIO(content), len(content), executable=executable)

    def link(self, name: str, target: str) -> None:
        self.folder(name.rpartition("/")[0])
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def tree(self, root: Path, into: str) -> None:
        for path in sorted(root.rglob("*")):
            name = f"{into}/{path.relative_to(root).as_posix()}"
            if path.is_symlink():
                self.link(name, str(path.readlink()))
            elif path.is_dir():
                self.folder(name)
            elif path.is_file():
                with path.open("rb") as stream:
                    self.file(
                        name,
                        stream,
                        path.stat().st_size,
                        executable=bool(path.stat().st_mode & 0o111),
                    )

    def close(self) -> None:
        self.tar.close()


def add_npm_files(layer: Layer, agent: str, files: tuple[NpmFile, ...], tarball: Path) -> None:
    _, triple = machine()
    home = f"{AGENT_ROOT}/{agent}"
    wanted = [
        NpmFile(
            f.source.format(triple=triple),
            f.target.format(triple=triple),
            tuple(s.format(triple=triple) for s in f.skip),
        )
        for f in files
    ]
    found: set[str] = set()
    with tarfile.open(tarball, mode="r|gz") as archive:
        for member in archive:
            for item in wanted:
                relative = _beneath(member.name, item.source)
                if relative is None or any(_beneath(relative, s) is not None for s in item.skip):
                    continue
                target = f"{home}/{item.target}" + (f"/{relative}" if relative else "")
                found.add(item.source)
                if member.isdir():
                    layer.folder(target)
                elif member.isfile():
                    stream = archive.extractfile(member)
                    assert stream is not None  # a regular file always has a stream
                    layer.file(target, stream, member.size, executable=bool(member.mode & 0o111))
                elif (
                    member.issym()
                    and not member.linkname.startswith("/")
                    and ".." not in member.linkname.split("/")
                ):
                    layer.link(target, member.linkname)
                # Hard links, devices and links out of the package are left out.
    missing = [item.source for item in wanted if item.source not in found]
    if missing:
        raise ImageError(f"{tarball.name} lacks {', '.join(missing)}: is it the right package?")


def _beneath(name: str, prefix: str) -> str | None:
    """`name` relative to `prefix` ("" for the prefix itself), or None if not beneath it."""
    name = name.strip("/")
    if name == prefix:
        return ""
    if name.startswith(prefix + "/"):
        return name[len(prefix) + 1 :]
    return None


# --- the image --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRecipe:
    spec: AgentSpec
    version: str
    base_recipe: str
    packages: tuple[tuple[str, str, str], ...]  # (name, version, integrity)
    mcp_requirements: bytes
    mcp_sources: dict[str, bytes]
    start_script: bytes

    def digest(self) -> str:
        canonical = {
            "layer": LAYER_VERSION,
            "agent": self.spec.name,
            "version": self.version,
            "files": [
                [p.spec, [[f.source, f.target, list(f.skip)] for f in p.files]]
                for p in self.spec.packages
            ],
            "links": list(self.spec.links),
            "base": self.base_recipe,
            "packages": [list(p) for p in self.packages],
            "mcp": hashlib.sha256(self.mcp_requirements).hexdigest(),
            "mcp_sources": {
                k: hashlib.sha256(v).hexdigest() for k, v in sorted(self.mcp_sources.items())
            },
            "start": hashlib.sha256(self.start_script).hexdigest(),
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _prepare(
    spec: AgentSpec, version: str, base_recipe: str, say: Say, *, offline: bool = False
) -> tuple[AgentRecipe, tuple[Fetched, ...], bytes]:
    """Fetch the agent's packages and say exactly what the image will hold."""
    fetched = fetch_agent(spec, version, say, offline=offline)
    packages = [(f.name, f.version, f.integrity) for f in fetched]
    python_lock = b""
    if spec.pypi:
        # Pinned: the lock file with every wheel's hash. Another version: PyPI's resolution.
        pinned = version == spec.default_version
        python_lock = lock_file(spec.name) if pinned else f"{spec.pypi}=={version}\n".encode()
        packages.append(
            (
                spec.pypi,
                version,
                "lock-sha256-" + hashlib.sha256(python_lock).hexdigest()
                if pinned
                else "pypi-resolved",
            )
        )
        say(
            f"      {spec.pypi}=={version}: "
            f"{'pinned with hashes' if pinned else 'resolved by PyPI (not pinned)'}"
        )
    recipe = AgentRecipe(
        spec,
        version,
        base_recipe,
        tuple(packages),
        mcp_requirements(),
        mcp_sources(),
        start_script(spec.name),
    )
    return recipe, fetched, python_lock


def write_layer(
    recipe: AgentRecipe,
    fetched: tuple[Fetched, ...],
    python_lock: bytes,
    output: Path,
    say: Say,
    *,
    offline: bool = False,
) -> None:
    """The agent's layer as a tar file: its packages, Airlock's MCP server, its start
    script and the commands that run it."""
    spec = recipe.spec
    with tempfile.TemporaryDirectory(prefix="airlock-agent-") as scratch:
        work = Path(scratch)
        say("[3/5] installing Python packages …")
        site = work / "mcp"
        install_python_packages(
            recipe.mcp_requirements, site, "the MCP server", say, offline=offline
        )
        agent_lib = work / "agent-lib"
        if spec.pypi:
            install_python_packages(
                python_lock,
                agent_lib,
                spec.pypi,
                say,
                hashed=recipe.version == spec.default_version,
                offline=offline,
            )
        say("[4/5] writing the layer …")
        with output.open("wb") as stream:
            layer = Layer(stream)
            for package, tarball in zip(spec.packages, fetched, strict=True):
                add_npm_files(layer, spec.name, package.files, tarball.path)
            start = f"{AGENT_ROOT}/{spec.name}/start"
            layer.data(start, recipe.start_script, executable=True)
            for link in spec.links:
                layer.link(link, start)
            layer.tree(site, f"{MCP_ROOT}/lib")
            if spec.pypi:
                layer.tree(agent_lib, f"{AGENT_ROOT}/{spec.name}/lib")
            for name, content in sorted(recipe.mcp_sources.items()):
                layer.data(f"{MCP_ROOT}/{name}", content, executable=True)
            layer.link("/usr/local/bin/airlock-mcp", f"{MCP_ROOT}/airlock_mcp.py")
            # The same asks as a shell command, for agents without an MCP client.
            layer.link("/usr/local/bin/airlock-request", f"{MCP_ROOT}/airlock_request.py")
            layer.close()
    say(f"      {output.stat().st_size / 1e6:.0f} MB")


def layer_for_containerfile(agent: str, output: Path, version: str | None = None) -> None:
    """packaging/Containerfile.agent: the same layer, written where a registry is at hand."""
    spec = AGENTS[agent]
    version = version or spec.default_version
    recipe, fetched, python_lock = _prepare(spec, version, Recipe.default().digest(), print)
    write_layer(recipe, fetched, python_lock, output, print)


def pinned_labels(agent: str) -> dict[str, str]:
    """The labels `airlock image build` gives the agent's image at its pinned version (all
    but the base image's id), known without fetching anything: for a Containerfile build."""
    spec = AGENTS[agent]
    arch, _ = machine()
    packages = []
    for package in spec.packages:
        name, _, version = package.spec.format(arch=arch, version=spec.default_version).rpartition(
            "@"
        )
        if arch not in package.pinned:
            raise ImageError(f"{name} is not pinned for {arch}: use airlock image build")
        packages.append((name, version, package.pinned[arch]))
    if spec.pypi:
        lock = lock_file(agent)
        packages.append(
            (spec.pypi, spec.default_version, "lock-sha256-" + hashlib.sha256(lock).hexdigest())
        )
    recipe = AgentRecipe(
        spec,
        spec.default_version,
        Recipe.default().digest(),
        tuple(packages),
        mcp_requirements(),
        mcp_sources(),
        start_script(agent),
    )
    labels = _labels_for(recipe, "")
    del labels[LABEL_BASE]
    return labels


def build_agent(
    client: docker.DockerClient,
    agent: str,
    *,
    version: str | None = None,
    base: str = DEFAULT_IMAGE,
    tag: str | None = None,
    force: bool = False,
    offline: bool = False,
    say: Say = log.info,
) -> AgentBuild:
    """Build `airlock-agent:AGENT` unless an image of this recipe exists (or `force`)."""
    if agent not in AGENTS:
        raise ImageError(f"no agent named {agent!r} (known: {', '.join(sorted(AGENTS))})")
    spec = AGENTS[agent]
    version = version or spec.default_version
    if not re.fullmatch(r"[0-9A-Za-z.+-]{1,64}", version):
        raise ImageError(f"{version!r} is not a package version")
    tag = tag or agent_tag(agent)
    started = time.monotonic()
    say(f"[1/5] base image {base} …")
    base_info = build(client, Recipe.default(), base, say=say)
    say(f"      {base}: {base_info.size / 1e6:.0f} MB ({base_info.state.value})")
    say(f"[2/5] fetching {spec.package} {version} …")
    recipe, fetched, python_lock = _prepare(spec, version, base_info.recipe, say, offline=offline)
    existing = _labels(client, tag)
    if existing.get(RECIPE_LABEL) == recipe.digest() and not force:
        image = client.images.get(tag)
        say(f"{tag} is up to date (recipe {recipe.digest()[:12]})")
        return AgentBuild(tag, agent, version, fetched, int(image.attrs.get("Size", 0)), False)
    with tempfile.TemporaryDirectory(prefix="airlock-agent-") as scratch:
        layer_path = Path(scratch) / "layer.tar"
        write_layer(recipe, fetched, python_lock, layer_path, say, offline=offline)
        say(f"[5/5] committing {tag} …")
        image_id = _commit(client, base, tag, layer_path, _labels_for(recipe, base_info.id))
    try:
        _check(client, tag, spec)
    except ImageError:
        _remove(client, tag)
        raise
    old = existing.get("__id__")
    if old and old != image_id:
        _remove(client, old)
    size = int(client.images.get(tag).attrs.get("Size", 0))
    say(
        f"built {tag} ({size / 1e6:.0f} MB, {spec.name} {version}, recipe "
        f"{recipe.digest()[:12]}) in {time.monotonic() - started:.0f} s"
    )
    return AgentBuild(tag, agent, version, fetched, size, True)


def _labels_for(recipe: AgentRecipe, base_id: str) -> dict[str, str]:
    return {
        RECIPE_LABEL: recipe.digest(),
        LABEL_AGENT: recipe.spec.name,
        LABEL_VERSION: recipe.version,
        LABEL_PACKAGES: json.dumps(
            {f"{name}@{version}": integrity for name, version, integrity in recipe.packages},
            separators=(",", ":"),
        ),
        LABEL_BASE: base_id,
    }


def _labels(client: docker.DockerClient, tag: str) -> dict[str, str]:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return {}
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise EngineError(f"the Docker engine could not look up {tag}: {e}") from e
    return {**(image.labels or {}), "__id__": image.id or ""}


def _commit(
    client: docker.DockerClient, base: str, tag: str, layer: Path, labels: dict[str, str]
) -> str:
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:
        repository, version = tag, "latest"
    try:
        container = client.containers.create(base, ["/bin/true"], network_disabled=True)
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise ImageError(f"the Docker engine cannot create a container of {base}: {e}") from e
    try:
        with layer.open("rb") as stream:
            if not container.put_archive("/", stream):
                raise ImageError("the Docker engine refused the agent's files")
        changes = [f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()]
        changes += [f"USER {AGENT_USER}", 'CMD ["/bin/sh"]']
        image = container.commit(repository=repository, tag=version, changes=changes)
        return str(image.id)
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise ImageError(f"the Docker engine could not commit {tag}: {e}") from e
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError as e:
            log.info("left the build container %s: %s", container.id, e)


def _check(client: docker.DockerClient, tag: str, spec: AgentSpec) -> None:
    """Run the agent's version command and the MCP server's import the way sessions do."""
    script = (
        '"$@" >/dev/null 2>/tmp/err || { echo "agent: $(head -c 300 /tmp/err)"; }; '
        f"python3 -I -c \"import sys; sys.path.insert(0, '{MCP_ROOT}/lib'); "
        'import mcp.server.mcpserver" 2>/tmp/err || echo "mcp: $(tail -n1 /tmp/err)"'
    )
    try:
        output = client.containers.run(
            tag,
            ["/bin/sh", "-c", script, "check", *spec.check],
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=AGENT_USER,
            remove=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=64m"},
            environment={"HOME": "/tmp"},
        )
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise ImageError(f"the new image {tag} does not run: {e}") from e
    problems = output.decode(errors="replace").strip()
    if problems:
        raise ImageError(f"the new image {tag} is broken: {problems}")


def _remove(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.remove(image)
    except docker.errors.APIError as e:
        log.info("kept image %s: %s", image, e)
