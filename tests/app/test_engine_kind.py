"""Which engine answers, and how Podman is told Airlock's settings: by tables."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from app.container import LABEL_ROLE, agents_first
from app.engine import one_line, seccomp_file
from app.engine_kind import (
    PODMAN_TMPFS,
    EngineKind,
    engine_kind,
    podman_host_config,
    podman_tmpfs,
    podman_userns,
    rootless_docker_create,
    seccomp_name,
)

DOCKER_VERSION = {
    "Version": "20.10.24",
    "Components": [
        {"Name": "Engine", "Version": "20.10.24"},
        {"Name": "containerd", "Version": "1.6"},
    ],
}
PODMAN_VERSION = {
    "Version": "4.3.1",
    "Components": [
        {"Name": "Podman Engine", "Version": "4.3.1"},
        {"Name": "Conmon", "Version": "2.1.6"},
    ],
}

KINDS = [
    (
        "docker rootful",
        DOCKER_VERSION,
        {"CgroupVersion": "2", "SecurityOptions": ["name=seccomp,profile=default"]},
        None,
        EngineKind("docker", "20.10.24", False, "2"),
        "Docker 20.10.24 (cgroup v2)",
        True,
    ),
    (
        "docker rootless",
        DOCKER_VERSION,
        {
            "CgroupVersion": "1",
            "SecurityOptions": ["name=seccomp,profile=default", "name=rootless"],
        },
        None,
        EngineKind("docker", "20.10.24", True, "1"),
        "rootless Docker 20.10.24 (cgroup v1)",
        False,
    ),
    # Podman's compat /info says nothing of rootless: its own /libpod/info does.
    (
        "podman rootless v1",
        PODMAN_VERSION,
        {"CgroupVersion": "1", "SecurityOptions": ["name=seccomp,profile=default"]},
        True,
        EngineKind("podman", "4.3.1", True, "1"),
        "rootless Podman 4.3.1 (cgroup v1)",
        False,
    ),
    (
        "podman rootless v2",
        PODMAN_VERSION,
        {"CgroupVersion": "2"},
        True,
        EngineKind("podman", "4.3.1", True, "2"),
        "rootless Podman 4.3.1 (cgroup v2)",
        True,
    ),
    ("unknown", {"Version": "1.0"}, {}, None, EngineKind("", "1.0"), "an unknown engine 1.0", True),
]


@pytest.mark.parametrize(
    ("version", "info", "rootless", "kind", "text", "limits"),
    [k[1:] for k in KINDS],
    ids=[k[0] for k in KINDS],
)
def test_the_engine_is_known_from_its_version_and_info(
    version: dict[str, Any],
    info: dict[str, Any],
    rootless: bool | None,
    kind: EngineKind,
    text: str,
    limits: bool,
) -> None:
    found = engine_kind(version, info, rootless)
    assert found == kind
    assert found.describe() == text
    assert found.limits_enforced is limits


SECCOMP = '{"defaultAction": "SCMP_ACT_ERRNO"}'
HOST_CONFIG = {
    "NetworkMode": "none",
    "SecurityOpt": ["no-new-privileges:true", f"seccomp={SECCOMP}"],
    "Tmpfs": {
        "/tmp": "rw,nosuid,nodev,noexec,size=16m",
        "/home/airlock": "rw,exec,size=1m,mode=0700,uid=1000,gid=1000",
    },
}


def test_podman_gets_the_profile_as_a_file_and_keeps_the_users_uid() -> None:
    config = podman_host_config(HOST_CONFIG, "/run/user/1000/airlock/seccomp/x.json", "keep-id")
    assert config["SecurityOpt"] == [
        "no-new-privileges:true",
        "seccomp=/run/user/1000/airlock/seccomp/x.json",
    ]
    assert config["UsernsMode"] == "keep-id"
    # Airlock's own small noexec /run and /var/tmp: Podman adds exec-able unlimited ones
    # to a read-only container that has none.
    assert config["Tmpfs"]["/var/tmp"] == PODMAN_TMPFS["/var/tmp"]
    assert "noexec" in config["Tmpfs"]["/run"] and "size=" in config["Tmpfs"]["/run"]
    assert config["Tmpfs"]["/home/airlock"] == "rw,exec,size=1m,mode=0700,U"
    assert HOST_CONFIG["SecurityOpt"][1] == f"seccomp={SECCOMP}"  # the original is kept


def test_rootless_docker_runs_the_agent_as_its_root_which_is_the_user() -> None:
    kwargs = {"image": "i", "user": "1000:1000", "host_config": HOST_CONFIG}
    created = rootless_docker_create(kwargs)
    assert created["user"] == "0:0"
    assert created["host_config"]["Tmpfs"] == {
        "/tmp": "rw,nosuid,nodev,noexec,size=16m",
        "/home/airlock": "rw,exec,size=1m,mode=0700,uid=0,gid=0",
    }
    assert created["host_config"]["SecurityOpt"] == HOST_CONFIG["SecurityOpt"]  # as given
    assert kwargs["user"] == "1000:1000" and "uid=1000" in HOST_CONFIG["Tmpfs"]["/home/airlock"]


def test_podman_without_the_profiles_file_is_refused() -> None:
    with pytest.raises(ValueError, match="needs its file"):
        podman_host_config(HOST_CONFIG, None, "keep-id")


@pytest.mark.parametrize(
    ("network", "userns"), [("none", "keep-id"), ("container:abc", "container:abc")]
)
def test_the_agent_joins_the_user_namespace_of_the_sidecar_it_shares_a_network_with(
    network: str, userns: str
) -> None:
    assert podman_userns(network) == userns


def test_a_tmpfs_of_ours_is_not_replaced() -> None:
    assert podman_tmpfs({"/run": "rw,noexec,size=2m"})["/run"] == "rw,noexec,size=2m"


def test_the_seccomp_file_is_named_by_its_content() -> None:
    assert seccomp_name(SECCOMP) != seccomp_name(SECCOMP + " ")
    assert seccomp_name(SECCOMP).endswith(".json") and len(seccomp_name(SECCOMP)) == 69


def test_agents_are_removed_before_the_sidecars_they_depend_on() -> None:
    found = [{LABEL_ROLE: "bridge", "n": "1"}, {"n": "2"}, {LABEL_ROLE: "agent", "n": "3"}]
    assert [c["n"] for c in agents_first(found, lambda c: c)] == ["2", "3", "1"]


def test_an_engine_error_is_one_bounded_line() -> None:
    quoted = 'opening seccomp profile failed: open {\n  "a": 1,\n' + "x" * 1000 + "}"
    line = one_line(quoted)
    assert "\n" not in line and len(line) == 300 and line.endswith("…")


def test_the_seccomp_file_holds_the_profile_even_if_changed_in_between(tmp_path: Path) -> None:
    path = seccomp_file(SECCOMP, tmp_path)
    assert path.read_text() == SECCOMP and path.name == seccomp_name(SECCOMP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert seccomp_file(SECCOMP, tmp_path).read_text() == SECCOMP
