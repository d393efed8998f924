"""The default agent image: bootstrapped offline with mmdebstrap, imported, then checked."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from app.errors import EngineError, ImageError

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "airlock-agent:bookworm"
RECIPE_LABEL = "org.airlock.recipe"
AGENTS_IN_IMAGE = "/opt/airlock/agents"
AGENT_USER = "65534:65534"
# Tools every profile may rely on: the portal client, an HTTP client, the demo agents, and
# what coding agents call.
REQUIRED_TOOLS = ("python3", "gdbus", "curl", "git", "rg", "diff", "patch", "find")
# Bump when the build steps change in a way the recipe fields below do not capture.
BUILD_VERSION = 1

SUITE = "bookworm"
# What coding agents expect to find: a shell userland, git, ripgrep (Claude Code and Codex
# search with it), diff and patch for their edits, and the CA bundle for HTTPS clients.
PACKAGES = (
    "python3",
    "curl",
    "ca-certificates",
    "libglib2.0-bin",
    "procps",
    "git",
    "ripgrep",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "diffutils",
    "patch",
    "less",
)
# Nobody reads documentation inside an agent container; leaving it out saves tens of MB.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
# Without this hook, apt satisfies bookworm's merged-/usr dependency with `usrmerge`, which
# drags in 50 MB of Perl. Older mmdebstrap versions lack it; the image then merely grows.
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"USER {AGENT_USER}",
    "WORKDIR /tmp",
    'CMD ["/bin/sh"]',
)

# mmdebstrap output that means apt could not reach any mirror.
_OFFLINE = re.compile(
    r"Temporary failure resolving|Could not resolve|Failed to fetch|Unable to connect|"
    r"Network is unreachable|Connection timed out|apt-get update failed|Could not connect"
)

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class AgentScript:
    name: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that decides the image's content: same recipe, same image."""

    suite: str
    packages: tuple[str, ...]
    dpkg_options: tuple[str, ...]
    hook_dirs: tuple[str, ...]
    agents: tuple[AgentScript, ...]
    changes: tuple[str, ...]

    @classmethod
    def default(cls) -> Recipe:
        hooks = (str(MERGED_USR_HOOKS),) if MERGED_USR_HOOKS.is_dir() else ()
        return cls(SUITE, PACKAGES, DPKG_OPTIONS, hooks, shipped_agents(), CHANGES)

    def digest(self) -> str:
        canonical = {
            "build": BUILD_VERSION,
            "suite": self.suite,
            "packages": list(self.packages),
            "dpkg": list(self.dpkg_options),
            "hooks": list(self.hook_dirs),
            "agents": {a.name: hashlib.sha256(a.content).hexdigest() for a in self.agents},
            "changes": list(self.changes),
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def mmdebstrap_command(self, output: Path, agents_dir: Path, *, unshare: bool) -> list[str]:
        command = ["mmdebstrap", "--variant=minbase", f"--include={','.join(self.packages)}"]
        if unshare:
            command.append("--mode=unshare")
        command += [f"--dpkgopt={option}" for option in self.dpkg_options]
        command += [f"--hook-dir={folder}" for folder in self.hook_dirs]
        command += [
            f'--customize-hook=mkdir -p "$1{AGENTS_IN_IMAGE}"',
            f"--customize-hook=sync-in {agents_dir} {AGENTS_IN_IMAGE}",
            f'--customize-hook=chown -R 0:0 "$1{AGENTS_IN_IMAGE}"',
            f'--customize-hook=chmod -R 0755 "$1{AGENTS_IN_IMAGE}"',
            '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*',
            self.suite,
            str(output),
        ]
        return command


def shipped_agents() -> tuple[AgentScript, ...]:
    """The demo agents from the `profiles/agents/` package directory, sorted by name."""
    folder = importlib.resources.files("profiles") / "agents"
    scripts = [
        AgentScript(entry.name, entry.read_bytes())
        for entry in folder.iterdir()
        if entry.name.endswith(".py") and entry.is_file()
    ]
    if not scripts:
        raise ImageError(f"no agent scripts found in {folder}: is the `profiles` package complete?")
    return tuple(sorted(scripts, key=lambda s: s.name))


class ImageState(Enum):
    MISSING = "missing"
    OUTDATED = "outdated"
    CURRENT = "up to date"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    tag: str
    state: ImageState
    id: str = ""
    size: int = 0
    created: str = ""
    user: str = ""
    recipe: str = ""


def image_info(client: docker.DockerClient, tag: str, recipe: Recipe) -> ImageInfo:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return ImageInfo(tag, ImageState.MISSING)
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise EngineError(f"the Docker engine could not look up {tag}: {e}") from e
    config = image.attrs.get("Config") or {}
    found = (image.labels or {}).get(RECIPE_LABEL, "")
    return ImageInfo(
        tag=tag,
        state=ImageState.CURRENT if found == recipe.digest() else ImageState.OUTDATED,
        id=image.id or "",
        size=int(image.attrs.get("Size", 0)),
        created=str(image.attrs.get("Created", "")),
        user=str(config.get("User", "")),
        recipe=found,
    )


def build(
    client: docker.DockerClient,
    recipe: Recipe,
    tag: str = DEFAULT_IMAGE,
    *,
    force: bool = False,
    say: Say = log.info,
) -> ImageInfo:
    """Build the image unless one with this tag and recipe exists (or `force`)."""
    before = image_info(client, tag, recipe)
    if before.state is ImageState.CURRENT and not force:
        return before
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "mmdebstrap is not installed: sudo apt-get install --no-install-recommends "
            "mmdebstrap uidmap"
        )
    with tempfile.TemporaryDirectory(prefix="airlock-image-") as scratch:
        work = Path(scratch)
        say(f"[1/3] bootstrapping Debian {recipe.suite} …")
        tarball = _bootstrap(recipe, work, say)
        size_mb = tarball.stat().st_size / 1e6
        say(f"[2/3] importing into Docker ({size_mb:.0f} MB) …")
        image_id = _import(client, recipe, tarball, tag)
    say("[3/3] checking the image …")
    try:
        _check(client, tag)
    except ImageError:
        _remove(client, tag)  # so that the next build does not call a broken image up to date
        raise
    if before.id and before.id != image_id:
        _remove(client, before.id)
    return image_info(client, tag, recipe)


def _bootstrap(recipe: Recipe, work: Path, say: Say) -> Path:
    agents = work / "agents"
    agents.mkdir()
    # Write the exact bytes the recipe hashed, so the label cannot describe other scripts.
    for script in recipe.agents:
        (agents / script.name).write_bytes(script.content)
    output = work / "rootfs.tar"
    unshare = os.geteuid() != 0
    command = recipe.mmdebstrap_command(output, agents, unshare=unshare)
    log.debug("running %s", command)
    tail: list[str] = []
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None  # stdout=PIPE guarantees it; this tells mypy
        for line in process.stdout:
            line = line.rstrip()
            say(f"      {line}")
            tail = [*tail[-39:], line]
    if process.returncode != 0:
        raise ImageError(_explain_failure(process.returncode, tail, unshare=unshare))
    return output


def _explain_failure(status: int, tail: Iterable[str], *, unshare: bool) -> str:
    lines = list(tail)
    if any(_OFFLINE.search(line) for line in lines):
        return (
            "mmdebstrap could not reach a Debian mirror (deb.debian.org): build where it is "
            "reachable, or with a registry: docker build -f packaging/Containerfile "
            f"-t {DEFAULT_IMAGE} ."
        )
    errors = [line for line in lines if line.startswith("E:")] or lines or ["no output"]
    last = errors[-1]
    if unshare:
        return (
            f"mmdebstrap --mode=unshare failed ({last}): run `sudo airlock image build`, "
            "or give your user subordinate ids (uidmap package, /etc/subuid and /etc/subgid) "
            "and allow unprivileged user namespaces"
        )
    return f"mmdebstrap failed with status {status}: {last}"


def _import(client: docker.DockerClient, recipe: Recipe, tarball: Path, tag: str) -> str:
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:  # "name" or "registry:5000/name"
        repository, version = tag, "latest"
    changes = [*recipe.changes, f"LABEL {RECIPE_LABEL}={recipe.digest()}"]
    try:
        reply = client.api.import_image(
            src=str(tarball), repository=repository, tag=version, changes=changes
        )
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise ImageError(f"the Docker engine refused to import the image: {e}") from e
    # The engine answers with JSON status lines; the last one carries the new image's id.
    statuses = [json.loads(line) for line in str(reply).splitlines() if line.strip()]
    for status in reversed(statuses):
        if "error" in status:
            raise ImageError(f"the Docker engine refused to import the image: {status['error']}")
        if str(status.get("status", "")).startswith("sha256:"):
            image_id = str(status["status"])
            _name(client, image_id, repository, version)
            return image_id
    raise ImageError(f"the Docker engine did not say which image it imported: {reply!r}")


def _name(client: docker.DockerClient, image_id: str, repository: str, version: str) -> None:
    """Gives the imported image its tag, and only it: Podman's import ignores the tag it is
    given and names the image `REPOSITORY:latest` instead."""
    wanted = f"{repository}:{version}"
    try:
        tags = client.images.get(image_id).tags
        if any(t == wanted or t.endswith(f"/{wanted}") for t in tags):
            return
        client.api.tag(image_id, repository, version, force=True)
        for tag in tags:
            client.api.remove_image(tag)  # untags: the image keeps its wanted name
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise ImageError(f"cannot name the imported image {wanted}: {e}") from e


def _check(client: docker.DockerClient, tag: str) -> None:
    """Run the image the way sessions will, and make sure the tools they need are there."""
    script = 'for t in "$@"; do command -v "$t" >/dev/null || echo "$t"; done'
    try:
        output = client.containers.run(
            tag,
            ["/bin/sh", "-c", script, "check", *REQUIRED_TOOLS],
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=AGENT_USER,
            remove=True,
        )
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise ImageError(f"the new image {tag} does not run: {e}") from e
    missing = output.decode(errors="replace").split()
    if missing:
        raise ImageError(f"the new image {tag} lacks {', '.join(missing)}; the build is broken")


def _remove(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.remove(image)
    except docker.errors.APIError as e:
        # Still used by a container, or by another tag: harmless, it only takes disk space.
        log.info("kept image %s: %s", image, e)
