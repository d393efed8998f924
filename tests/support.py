"""Helpers shared by the tests: the unprivileged tester and small test profiles."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AIRLOCK = BIN / "airlock"
TESTER = "airlock-tester"
DEFAULT_IMAGE = "airlock-agent:bookworm"


@dataclass
class DesktopUser:
    """The person at the desktop: an unprivileged user in the docker group, running the real
    `airlock` command line, with state and config of their own under `base`."""

    name: str
    uid: int
    gid: int
    home: Path
    base: Path
    prefix: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        timeout: float = 180,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        command = [
            *self.prefix,
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            str(AIRLOCK),
            *args,
        ]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.base,
            errors="replace",
        )

    def popen(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        env = dict(self.env, **(extra_env or {}))
        command = [
            *self.prefix,
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            str(AIRLOCK),
            *args,
        ]
        # A session of its own: `stop` can then reach the command behind runuser.
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.base,
            errors="replace",
            start_new_session=True,
        )

    @staticmethod
    def stop(process: subprocess.Popen[str]) -> None:
        """Kills a `popen`ed command and what it started (SIGKILL to runuser alone would
        leave the command running)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def own(self, path: Path) -> Path:
        if os.getuid() == 0:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)
        return path

    def mkdir(self, relative: str, mode: int = 0o755) -> Path:
        path = self.base / relative
        path.mkdir(parents=True, exist_ok=True)
        for part in [path, *path.parents]:
            if part == self.base:
                break
            self.own(part)
        path.chmod(mode)
        return path

    def write(self, relative: str, content: str | bytes, mode: int = 0o644) -> Path:
        path = self.base / relative
        self.mkdir(str(Path(relative).parent))
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        path.chmod(mode)
        return self.own(path)


def engine_host_under_test() -> str | None:
    """The DOCKER_HOST of the engine under test: None for the machine's Docker;
    AIRLOCK_TEST_ENGINE=podman means the tester's rootless Podman service (its socket under
    /run/user/UID, as `packaging/setup podman` starts it)."""
    chosen = os.environ.get("AIRLOCK_TEST_ENGINE", "docker")
    if chosen == "docker":
        return None
    if chosen != "podman":
        pytest.fail(f"AIRLOCK_TEST_ENGINE={chosen!r}: docker or podman")
    uid = pwd.getpwnam(TESTER).pw_uid if os.getuid() == 0 else os.getuid()
    return f"unix:///run/user/{uid}/podman/podman.sock"


def limits_dropped_by_engine_under_test() -> bool:
    """Whether the engine under test cannot hold resource limits: rootless Podman on a
    cgroup v1 host (app/engine_kind.py: `limits_enforced`), as on the project's machines.
    The tests' profiles then accept running without them (`[sandbox] accept_weaker`), and
    the tests marked `engines` check that each session said so (tests/conftest.py)."""
    return (
        os.environ.get("AIRLOCK_TEST_ENGINE") == "podman"
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    )


ACCEPT_LIMITS = '\n[sandbox]\naccept_weaker = ["limits"]\n'


def engine_acceptance() -> str:
    """The profile text the engine under test needs: the accepted limits, or nothing."""
    return ACCEPT_LIMITS if limits_dropped_by_engine_under_test() else ""


def verified_outcome() -> str:
    """How a session's record begins once its sandbox check passed on the engine under
    test: "verified (N checks)", or the accepted weakening's warning."""
    return "weaker than asked: " if limits_dropped_by_engine_under_test() else "verified ("


def sandbox_warnings(state: Path) -> list[dict[str, object]]:
    """The details of every `sandbox.verified` record in the audit log under `state` (an
    XDG_STATE_HOME): what the tests marked `engines` check of the tester's sessions."""
    from app.audit import AuditRecord, records

    directory = state / "airlock" / "audit"
    if not directory.is_dir():
        return []
    return [
        dict(r.details)
        for r in records(directory)
        if isinstance(r, AuditRecord) and r.kind == "sandbox.verified"
    ]


SANDBOX_RECORDS = pytest.StashKey[list[dict[str, object]]]()


@contextlib.contextmanager
def engine_environment(host: str | None) -> Iterator[None]:
    """DOCKER_HOST set to `host` (if any) while inside."""
    before = os.environ.get("DOCKER_HOST")
    if host is not None:
        os.environ["DOCKER_HOST"] = host
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before


def _tester_account() -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(TESTER)
    except KeyError:
        pytest.fail(f"user {TESTER} is missing: `sudo packaging/setup test` creates it")
    members = grp.getgrnam("docker").gr_mem
    if TESTER not in members:
        pytest.fail(f"user {TESTER} is not in the docker group: `sudo packaging/setup test`")
    return account


def make_tester(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DesktopUser]:
    if os.getuid() == 0:
        account = _tester_account()
        home = Path(account.pw_dir)
        base = home / "airlock-tests" / f"{request.node.name[:40]}-{secrets.token_hex(3)}"
        base.mkdir(parents=True)
        for part in (home / "airlock-tests", base):
            os.chown(part, account.pw_uid, account.pw_gid)
        if not os.access(AIRLOCK, os.X_OK):
            pytest.fail(f"{AIRLOCK} is missing")
        probe = subprocess.run(["runuser", "-u", TESTER, "--", "test", "-x", str(AIRLOCK)])
        if probe.returncode != 0:
            pytest.fail(
                f"{TESTER} cannot run {AIRLOCK}: make the checkout's parent directories "
                "world-searchable (chmod o+x)"
            )
        who = DesktopUser(
            TESTER, account.pw_uid, account.pw_gid, home, base, ["runuser", "-u", TESTER, "--"]
        )
    else:
        account = pwd.getpwuid(os.getuid())
        who = DesktopUser(
            account.pw_name, os.getuid(), os.getgid(), Path(account.pw_dir), tmp_path, []
        )
    runtime = Path(f"/tmp/airlock-test-{secrets.token_hex(4)}")  # sockets want short paths
    runtime.mkdir(mode=0o700)
    who.own(runtime)
    who.env = {
        "XDG_RUNTIME_DIR": str(runtime),
        "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(who.home),
        "XDG_STATE_HOME": str(who.base / ".state"),
        "XDG_CONFIG_HOME": str(who.base / ".config"),
        "LANG": "C.UTF-8",
        # No background supervisor outliving the test (tests/ui/test_warm.py turns it on).
        "AIRLOCK_AUTOSTART": "0",
    }
    if (host := engine_host_under_test()) is not None:
        who.env["DOCKER_HOST"] = host
    yield who
    # Before the tester's files go: what its sessions' sandboxes were (tests/conftest.py).
    request.node.stash.setdefault(SANDBOX_RECORDS, []).extend(sandbox_warnings(who.base / ".state"))
    shutil.rmtree(runtime, ignore_errors=True)
    if who.base != tmp_path:
        shutil.rmtree(who.base, ignore_errors=True)


def containers(
    engine: docker.DockerClient, *labels: str, stopped: bool = True
) -> list[dict[str, object]]:
    """The engine's containers carrying every one of `labels`, as its list reports them.

    One request: `engine.containers.list` inspects each listed container in turn, and one
    that is removed meanwhile makes it fail with NotFound."""
    return engine.api.containers(all=stopped, filters={"label": list(labels)})


def profile_text(
    image: str,
    command: list[str] | None = None,
    memory: str = "256m",
    pids: int = 64,
    extra: str = "",
    staging: str = "64m",
) -> str:
    """A small test profile running `command` in the agent image."""
    argv = ", ".join(json.dumps(part) for part in (command or ["sh", "-c", "echo hello"]))
    return (
        f'name = "test-agent"\nimage = "{image}"\ncommand = [{argv}]\ntimeout = "2m"\n{extra}\n'
        f'[resources]\nmemory = "{memory}"\ncpus = 1.0\npids = {pids}\ntmpfs = "16m"\n'
        f'staging = "{staging}"\n{engine_acceptance()}'
    )


class CollectedOutput:
    """An Output (app.sessions) that keeps what the agent printed, per stream."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []

    def write(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    def text(self, stream: str | None = None) -> str:
        """One stream's output, or both interleaved as they came."""
        data = b"".join(d for s, d in self.chunks if stream is None or s == stream)
        return data.decode("utf-8", "replace")


class Lines:
    """A process's output lines, read in a thread as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        stdout = process.stdout
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(ln) for ln in stdout], daemon=True).start()

    def take(self, count: int, timeout: float) -> list[str]:
        """Up to `count` lines, waiting at most `timeout` seconds."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self._lines.get(timeout=left))
            except queue.Empty:
                break
        return got


def until_followed(lines: Lines, mark: Callable[[], None], shown: Callable[[str], bool]) -> str:
    """Calls `mark` until the follower prints a line that `shown` recognises, and returns
    that line: a follower starts at the end of the log, so what was written before it got
    there is never shown."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mark()
        for line in lines.take(1, timeout=0.3):
            if shown(line):
                return line
    raise AssertionError("the follower never showed what was appended")
