"""The doctor's checks, from facts to findings, by tables; and the probes that read this
machine's files (disk, inotify, user namespaces)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from app.doctor import (
    DISK_PROBLEM,
    GIB,
    DesktopFacts,
    DiskFacts,
    EngineFacts,
    Finding,
    ImageFacts,
    InotifyFacts,
    Status,
    UsernsFacts,
    as_json,
    check_desktop,
    check_disk,
    check_engine,
    check_engine_limits,
    check_gvisor,
    check_image,
    check_inotify,
    check_keyring,
    check_profiles,
    check_runtimes,
    check_seccomp,
    check_session_bus,
    check_userns,
    exit_status,
    probe_disk,
    probe_engine,
    probe_inotify,
    probe_userns,
)
from app.egress.secret_service import BusFacts, Collection, KeyringFacts
from app.engine_kind import EngineKind

DOCKER = EngineFacts(
    "unix:///var/run/docker.sock",
    product="Docker Engine 20.10",
    api="1.41",
    security_options=("name=seccomp,profile=default",),
    runtimes=("runc",),
    default_runtime="runc",
)


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (
            "Error while fetching server API version: ('Connection aborted.', "
            "FileNotFoundError(2, 'No such file or directory'))",
            "sudo systemctl start docker",
        ),
        ("('Connection aborted.', PermissionError(13, 'Permission denied'))", "docker group"),
        ("the engine at unix:///x did not answer within 6 s", "accepts connections but does not"),
    ],
)
def test_an_unreachable_engine_gets_the_fix_for_why(error: str, fix: str) -> None:
    finding = check_engine(EngineFacts("unix:///x", error=error))
    assert finding.status is Status.PROBLEM
    assert finding.detail.startswith("no Docker engine answers at unix:///x: ")
    assert fix in finding.fix
    assert check_engine(DOCKER).status is Status.OK


def test_seccomp_missing_is_a_problem() -> None:
    assert check_seccomp(DOCKER).status is Status.OK
    bare = EngineFacts("x", security_options=("name=apparmor",))
    assert check_seccomp(bare).status is Status.PROBLEM


@pytest.mark.parametrize(
    ("wanted", "status", "says"),
    [
        ({}, Status.OK, "no profile names a runtime (default: runc; the engine has: runc)"),
        ({"a": "runc"}, Status.OK, "a (runc)"),
        ({"a": "runc", "sandboxed": "runsc"}, Status.PROBLEM, "sandboxed (runsc)"),
    ],
)
def test_runtimes_profiles_name_against_the_engines(
    wanted: dict[str, str], status: Status, says: str
) -> None:
    finding = check_runtimes(DOCKER, wanted)
    assert finding.status is status and says in finding.detail
    if status is Status.PROBLEM:
        assert "install runsc" in finding.fix and "remove `runtime`" in finding.fix


@pytest.mark.parametrize(
    ("facts", "status", "fix"),
    [
        (
            ImageFacts("airlock-agent:bookworm", ("demo",), "current", "airlock image build"),
            Status.OK,
            "",
        ),
        (
            ImageFacts("airlock-agent:bookworm", (), "missing", "airlock image build", needed=True),
            Status.PROBLEM,
            "build it: `airlock image build`",
        ),
        (
            ImageFacts(
                "airlock-agent:codex", ("codex",), "missing", "airlock image build --agent codex"
            ),
            Status.WARN,
            "build it: `airlock image build --agent codex`",
        ),
        (
            ImageFacts(
                "airlock-agent:codex", ("codex",), "outdated", "airlock image build --agent codex"
            ),
            Status.WARN,
            "rebuild it: `airlock image build --agent codex`",
        ),
        (
            ImageFacts(
                "mine:1", ("mine",), "mismatch", "", "it is sha256:b, not the pinned sha256:a"
            ),
            Status.PROBLEM,
            "update the profile's image_digest",
        ),
        (ImageFacts("mine:1", ("mine",), "present", ""), Status.OK, ""),
    ],
)
def test_images(facts: ImageFacts, status: Status, fix: str) -> None:
    finding = check_image(facts)
    assert finding.status is status
    assert finding.name == f"image {facts.image}"
    assert fix in finding.fix


@pytest.mark.parametrize(
    ("userns", "rootless", "status", "fix"),
    [
        (UsernsFacts(65536, None, None, True), False, Status.OK, ""),
        (UsernsFacts(0, None, None, True), False, Status.WARN, "user.max_user_namespaces=65536"),
        (
            UsernsFacts(65536, 0, None, True),
            True,
            Status.PROBLEM,
            "kernel.unprivileged_userns_clone=1",
        ),
        (
            UsernsFacts(65536, None, 1, True),
            False,
            Status.WARN,
            "kernel.apparmor_restrict_unprivileged_userns=0",
        ),
        (UsernsFacts(65536, None, None, False), True, Status.PROBLEM, "usermod --add-subuids"),
    ],
)
def test_user_namespaces(userns: UsernsFacts, rootless: bool, status: Status, fix: str) -> None:
    finding = check_userns(userns, rootless)
    assert finding.status is status and fix in finding.fix


@pytest.mark.parametrize(
    ("free", "status"),
    [(100 * GIB, Status.OK), (GIB, Status.WARN), (DISK_PROBLEM - 1, Status.PROBLEM)],
)
def test_disk(free: int, status: Status) -> None:
    finding = check_disk(DiskFacts(Path("/state/sessions"), free))
    assert finding.status is status and "/state/sessions" in finding.detail
    assert finding.status is Status.OK or "XDG_STATE_HOME" in finding.fix


@pytest.mark.parametrize(
    ("facts", "status", "fix"),
    [
        (InotifyFacts(524288, 512), Status.OK, ""),
        (InotifyFacts(8192, 512), Status.WARN, "fs.inotify.max_user_watches=524288"),
        (InotifyFacts(524288, 64), Status.WARN, "fs.inotify.max_user_instances=512"),
        (InotifyFacts(None, None), Status.WARN, ""),
    ],
)
def test_inotify(facts: InotifyFacts, status: Status, fix: str) -> None:
    finding = check_inotify(facts)
    assert finding.status is status and fix in finding.fix


BUS = BusFacts("unix:path=/run/user/1000/bus", "", True)
NO_BUS = BusFacts("", "", False, "no address")


def test_keyring_and_bus_share_the_secret_commands_advice() -> None:
    ready = KeyringFacts(
        BUS, "keyring.backends.SecretService.Keyring", "", "", Collection.UNLOCKED, True, False
    )
    assert check_keyring(ready) == Finding(
        "keyring", Status.OK, "SecretService: the login keyring is unlocked"
    )
    assert check_session_bus(ready).status is Status.OK
    locked_desktop = KeyringFacts(
        BUS, "keyring.backends.SecretService.Keyring", "", "", Collection.LOCKED, True, True
    )
    assert check_keyring(locked_desktop).status is Status.WARN
    nothing = KeyringFacts(
        NO_BUS,
        "keyring.backends.fail.Keyring",
        "no keyring backend works here",
        "no session bus",
        Collection.UNKNOWN,
        True,
        False,
    )
    keyring, bus = check_keyring(nothing), check_session_bus(nothing)
    assert keyring.status is bus.status is Status.PROBLEM
    assert "no D-Bus session bus on this login" in keyring.detail
    assert "cannot get their API keys" in keyring.detail
    assert keyring.fix == bus.fix and "dbus-run-session" in bus.fix


def test_desktop_names() -> None:
    text_login = check_desktop(DesktopFacts(False, None, None))
    assert [f.status for f in text_login] == [Status.OK, Status.OK]
    bare = check_desktop(DesktopFacts(True, False, False))
    assert [f.status for f in bare] == [Status.WARN, Status.WARN]
    full = check_desktop(DesktopFacts(True, True, True))
    assert [f.status for f in full] == [Status.OK, Status.OK]
    unknown = check_desktop(DesktopFacts(True, None, None, "timed out"))
    assert unknown[0].detail == "not checked: timed out"


def test_exit_status_and_json() -> None:
    findings = [Finding("a", Status.OK, "fine"), Finding("b", Status.WARN, "meh", "do x")]
    assert exit_status(findings) == 0
    findings.append(Finding("c", Status.PROBLEM, "broken", "do y"))
    assert exit_status(findings) == 1
    report = json.loads(as_json(findings))
    assert report["ok"] is False
    assert report["findings"][2] == {
        "name": "c",
        "status": "problem",
        "detail": "broken",
        "fix": "do y",
    }
    assert check_profiles({}) is None
    bad = check_profiles({"mine": "mine.toml: image: field required"})
    assert bad is not None and bad.status is Status.PROBLEM


def test_probes_read_this_machine(tmp_path: Path) -> None:
    disk = probe_disk(tmp_path / "not" / "yet" / "there")
    assert disk.error == "" and disk.free > 0
    inotify = probe_inotify()
    assert inotify.watches is not None and inotify.watches > 0
    assert probe_userns(os.getuid()).max_namespaces is not None


def test_an_engine_that_is_not_there_is_a_fact_not_an_exception(tmp_path: Path) -> None:
    facts, client = probe_engine({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}, 2)
    assert client is None and facts.error and facts.where == f"unix://{tmp_path}/none.sock"


@pytest.mark.parametrize(
    ("kind", "status", "says"),
    [
        (EngineKind("docker", "20.10", False, "1"), Status.OK, "enforces the profiles' limits"),
        (
            EngineKind("podman", "4.3.1", True, "1"),
            Status.PROBLEM,
            "rootless Podman 4.3.1 (cgroup v1) cannot enforce memory, pids and CPU limits",
        ),
        (EngineKind("docker", "24.0", True, "1"), Status.PROBLEM, "rootless Docker 24.0"),
        (EngineKind("podman", "4.9", True, "2"), Status.WARN, "not yet tested"),
    ],
)
def test_an_engine_that_cannot_hold_the_limits_is_a_problem(
    kind: EngineKind, status: Status, says: str
) -> None:
    finding = check_engine_limits(dataclasses.replace(DOCKER, kind=kind))
    assert finding.status is status and says in finding.detail


def test_rootless_podman_is_rootless_though_its_compat_info_does_not_say() -> None:
    podman = dataclasses.replace(DOCKER, kind=EngineKind("podman", "4.3.1", True, "1"))
    assert podman.rootless and not DOCKER.rootless


@pytest.mark.parametrize(
    ("runsc", "wanted", "status", "says"),
    [
        ("", {}, Status.OK, "runsc is registered with --network=host"),
        ("", {"sandboxed": "runsc"}, Status.OK, "used by sandboxed"),
        ("runsc is not registered with the engine", {}, Status.OK, "optional"),
        (
            "runsc is registered without --oci-seccomp",
            {"a": "runc", "sandboxed": "runsc"},
            Status.PROBLEM,
            "sessions of sandboxed are refused before they start",
        ),
    ],
)
def test_gvisor_says_whether_runsc_is_registered_and_how_to(
    runsc: str, wanted: dict[str, str], status: Status, says: str
) -> None:
    finding = check_gvisor(dataclasses.replace(DOCKER, runsc=runsc), wanted)
    assert finding.status is status and says in finding.detail
    if runsc:
        # The exact daemon.json entry, with the flags this runsc needs, and how to load it.
        text = finding.fix or finding.detail
        assert '"runtimeArgs": ["--network=host", "--host-uds=open", "--host-fifo=open", ' in text
        assert "kill -HUP" in text
