"""`airlock doctor` through the real command line, run by the unprivileged test user, with one
component taken away at a time without touching the shared machine: an engine nobody listens
for (and one that accepts but never answers), an image tag removed, a session bus without a
Secret Service, no session bus at all. Each is named with its fix, and the exit status is
non-zero; with everything there, the same checks are ok."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.netsupport import SecretService
from tests.support import DEFAULT_IMAGE, DesktopUser


@pytest.fixture
def short_home(tester: DesktopUser) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="kd-"))  # gnome-keyring's sockets want short paths
    os.chown(home, tester.uid, tester.gid)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def keyring_env(tester: DesktopUser, short_home: Path) -> Iterator[dict[str, str]]:
    """A session bus with an unlocked gnome-keyring on it, as a desktop login has."""
    service = SecretService(short_home, tester.prefix, (tester.uid, tester.gid)).start()
    try:
        yield {k: v for k, v in service.env.items() if k != "PATH"}
    finally:
        service.stop()


def doctor(
    tester: DesktopUser, env: dict[str, str], *args: str
) -> tuple[int, dict[str, dict[str, str]]]:
    done = tester.run("doctor", "--json", *args, extra_env=env, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    findings = {f["name"]: f for f in report["findings"]}
    assert report["ok"] is (done.returncode == 0)
    return done.returncode, findings


def problems(findings: dict[str, dict[str, str]]) -> set[str]:
    return {name for name, f in findings.items() if f["status"] == "problem"}


def test_with_everything_there_the_checks_are_ok(
    tester: DesktopUser, keyring_env: dict[str, str], engine: docker.DockerClient, agent_image: str
) -> None:
    status, findings = doctor(tester, keyring_env)
    for name in (
        "engine",
        "seccomp",
        "runtime",
        "session bus",
        "keyring",
        "disk",
        f"image {DEFAULT_IMAGE}",
    ):
        assert findings[name]["status"] == "ok", findings[name]
    assert (
        "Docker Engine" in findings["engine"]["detail"] or "Podman" in findings["engine"]["detail"]
    )
    assert "unlocked" in findings["keyring"]["detail"]
    assert status == (1 if problems(findings) else 0)
    human = tester.run("doctor", extra_env=keyring_env)
    assert "ok       engine: " in human.stdout and "ok       keyring: " in human.stdout


def test_an_engine_nobody_listens_for_is_named_with_the_fix(
    tester: DesktopUser, keyring_env: dict[str, str]
) -> None:
    gone = tester.base / "no-engine.sock"
    status, findings = doctor(tester, dict(keyring_env, DOCKER_HOST=f"unix://{gone}"))
    assert status == 1
    assert findings["engine"]["status"] == "problem"
    assert f"no Docker engine answers at unix://{gone}" in findings["engine"]["detail"]
    assert "systemctl start docker" in findings["engine"]["fix"]
    assert findings["images"]["detail"] == "not checked without an engine"
    human = tester.run("doctor", extra_env=dict(keyring_env, DOCKER_HOST=f"unix://{gone}"))
    assert human.returncode == 1
    assert "problem  engine: no Docker engine answers at" in human.stdout
    assert "         fix: start it (sudo systemctl start docker" in human.stdout


def test_an_engine_that_hangs_does_not_hang_doctor(
    tester: DesktopUser, keyring_env: dict[str, str]
) -> None:
    path = tester.base / "hung.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    path.chmod(0o666)
    listening.listen(16)  # connections are accepted by the kernel, never answered
    try:
        status, findings = doctor(tester, dict(keyring_env, DOCKER_HOST=f"unix://{path}"))
    finally:
        listening.close()
    assert status == 1
    assert findings["engine"]["status"] == "problem"
    assert (
        "does not answer" in findings["engine"]["fix"]
        or "timed out" in findings["engine"]["detail"].lower()
    )


def test_a_removed_image_is_named_with_the_command_that_builds_it(
    tester: DesktopUser, keyring_env: dict[str, str], engine: docker.DockerClient, agent_image: str
) -> None:
    # A tag of our own on the shared image: removing it leaves the image and its tags.
    tag = f"airlock-doctor-test:{secrets.token_hex(4)}"
    engine.images.get(agent_image).tag(tag)
    tester.write(
        ".config/airlock/profiles/doctor-probe.toml",
        f'name = "doctor-probe"\nimage = "{tag}"\ncommand = ["true"]\n',
    )
    try:
        status, findings = doctor(tester, keyring_env, "-p", "doctor-probe")
        assert findings[f"image {tag}"]["status"] == "ok"
        before = problems(findings)
    finally:
        engine.images.remove(tag)
    status, findings = doctor(tester, keyring_env, "-p", "doctor-probe")
    assert status == 1
    assert problems(findings) == before | {f"image {tag}"}
    image = findings[f"image {tag}"]
    assert "not in the engine (run by doctor-probe)" in image["detail"]
    assert image["fix"] == f"build it: docker pull {tag}, or docker build -t {tag} …"
    # Not named to be run: a warning, as for an agent image one may never use.
    _, findings = doctor(tester, keyring_env)
    assert findings[f"image {tag}"]["status"] == "warn"
    assert engine.images.get(agent_image)  # the shared image is still there


def test_a_session_bus_without_a_secret_service_is_named(
    tester: DesktopUser, short_home: Path
) -> None:
    service = SecretService(short_home, tester.prefix, (tester.uid, tester.gid))
    service.start(keyring=False)
    try:
        env = {k: v for k, v in service.env.items() if k != "PATH"}
        status, findings = doctor(tester, env)
    finally:
        service.stop()
    assert status == 1
    assert findings["session bus"]["status"] == "ok"
    keyring = findings["keyring"]
    assert keyring["status"] == "problem"
    assert "no login keyring yet" in keyring["detail"] or "no Secret Service" in keyring["detail"]
    assert "`airlock secret set NAME` starts gnome-keyring" in keyring["fix"]


def test_no_session_bus_at_all_is_named_with_what_works(tester: DesktopUser) -> None:
    assert not (Path(tester.env["XDG_RUNTIME_DIR"]) / "bus").exists()
    status, findings = doctor(tester, {})
    assert status == 1
    bus = findings["session bus"]
    assert bus["status"] == "problem" and "no D-Bus session bus on this login" in bus["detail"]
    assert "dbus-user-session" in bus["fix"] and "dbus-run-session -- $SHELL" in bus["fix"]
    assert findings["keyring"]["status"] == "problem"
    assert findings["keyring"]["fix"] == "the session bus's, above"
    dead = tester.base / "dead-bus"
    status, findings = doctor(tester, {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={dead}"})
    assert status == 1
    assert f"the session bus unix:path={dead} does not answer" in findings["session bus"]["detail"]


def test_a_desktop_without_notifications_or_tray_is_warned_about(
    tester: DesktopUser, keyring_env: dict[str, str]
) -> None:
    _, findings = doctor(tester, dict(keyring_env, DISPLAY=":404"))
    assert findings["notifications"]["status"] == "warn"
    assert "no notification server" in findings["notifications"]["detail"]
    assert findings["tray"]["status"] == "warn"
    assert "AppIndicator" in findings["tray"]["fix"]
