"""The shipped seccomp profile: its shape, what it refuses, and that ordinary programs still run."""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

from tests.support import REPO

PROFILE = REPO / "profiles" / "seccomp" / "airlock-default.json"
ENOSYS, EPERM = 38, 1
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
NAMESPACE_FLAGS |= 0x20000000 | 0x40000000 | 0x00000080  # NEWPID, NEWNET, NEWTIME
DENIED = {
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "bpf", "keyctl", "add_key", "request_key",
    "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm",
    "swapon", "swapoff", "reboot", "syslog", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "quotactl", "lookup_dcookie", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "vm86", "vm86old", "uselib", "nfsservctl", "pidfd_getfd", "kcmp",
}  # fmt: skip


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(PROFILE.read_text())
    return loaded


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def test_default_is_enosys_on_every_supported_architecture(profile: dict[str, Any]) -> None:
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == ENOSYS
    arches = {a["architecture"]: set(a["subArchitectures"]) for a in profile["archMap"]}
    assert arches == {
        "SCMP_ARCH_X86_64": {"SCMP_ARCH_X86", "SCMP_ARCH_X32"},
        "SCMP_ARCH_AARCH64": {"SCMP_ARCH_ARM"},
    }


def test_rules_are_well_formed(profile: dict[str, Any]) -> None:
    known = {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"}
    for rule in profile["syscalls"]:
        assert rule["action"] in known, rule
        assert rule["names"] and all(isinstance(n, str) and n for n in rule["names"]), rule
        if rule["action"] == "SCMP_ACT_ERRNO":
            assert rule["errnoRet"] in (EPERM, ENOSYS), rule
    unconditional = [n for r in profile["syscalls"] if "args" not in r for n in r["names"]]
    duplicates = {n for n in unconditional if unconditional.count(n) > 1}
    assert not duplicates, f"listed twice: {sorted(duplicates)}"


def test_denied_calls_are_never_allowed_and_say_eperm(profile: dict[str, Any]) -> None:
    allowed = {
        n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]
    }
    assert not DENIED & allowed, sorted(DENIED & allowed)
    refused = {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ERRNO" and r.get("errnoRet") == EPERM
        for n in r["names"]
    }
    assert refused >= DENIED, sorted(DENIED - refused)


def test_clone_is_allowed_only_without_namespace_flags(profile: dict[str, Any]) -> None:
    [rule] = rules_for(profile, "clone")
    assert rule["action"] == "SCMP_ACT_ALLOW"
    assert rule["args"] == [
        {"index": 0, "value": NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]


def test_clone3_is_not_allowed_and_says_enosys(profile: dict[str, Any]) -> None:
    # ENOSYS, not EPERM: glibc falls back to clone (which the rule above can inspect) only then.
    assert [(r["action"], r.get("errnoRet")) for r in rules_for(profile, "clone3")] == [
        ("SCMP_ACT_ERRNO", ENOSYS)
    ]


def test_personality_allows_only_harmless_personas(profile: dict[str, Any]) -> None:
    rules = rules_for(profile, "personality")
    assert all(r["action"] == "SCMP_ACT_ALLOW" and len(r["args"]) == 1 for r in rules)
    assert {r["args"][0]["value"] for r in rules} == {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert {r["args"][0]["op"] for r in rules} == {"SCMP_CMP_EQ"}


PROBE = """
import asyncio, ctypes, multiprocessing, os, sqlite3, ssl, subprocess, threading
seen = []
worker = threading.Thread(target=lambda: seen.append("thread"))
worker.start(); worker.join()
seen.append(subprocess.run(["sh", "-c", "echo sub | cat | sort"], capture_output=True,
                           text=True, check=True).stdout.strip())
async def child():
    process = await asyncio.create_subprocess_exec("true")
    return "asyncio" if await process.wait() == 0 else "asyncio failed"
seen.append(asyncio.run(child()))
with multiprocessing.Pool(2) as pool:
    seen.append("pool" if pool.map(abs, [-1, -2]) == [1, 2] else "pool failed")
seen.append("sqlite" if sqlite3.connect(":memory:").execute("select 1").fetchone() else "")
ssl.create_default_context()
libc = ctypes.CDLL(None, use_errno=True)
seen.append(f"clone3={libc.syscall(435, 0, 0)}/{ctypes.get_errno()}")
print(" ".join(seen))
"""


def run_confined(engine: docker.DockerClient, image: str, command: list[str]) -> tuple[int, str]:
    container = engine.containers.run(
        image,
        command,
        detach=True,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges", f"seccomp={PROFILE.read_text()}"],
        user="65534:65534",
    )
    try:
        status = container.wait(timeout=120)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_ordinary_programs_run_under_the_profile(
    engine: docker.DockerClient, agent_image: str
) -> None:
    status, output = run_confined(engine, agent_image, ["python3", "-c", PROBE])
    assert status == 0, output
    assert output.split() == [
        "thread", "sub", "asyncio", "pool", "sqlite", f"clone3=-1/{ENOSYS}"
    ], output  # fmt: skip
    shell = "curl --version >/dev/null && ls / >/dev/null && echo b a | tr ' ' '\\n' | sort | cat"
    status, output = run_confined(engine, agent_image, ["sh", "-c", shell])
    assert (status, output.split()) == (0, ["a", "b"]), output


@pytest.mark.docker
def test_new_namespaces_are_refused(engine: docker.DockerClient, agent_image: str) -> None:
    status, output = run_confined(engine, agent_image, ["unshare", "-U", "true"])
    assert status != 0
    assert "Operation not permitted" in output, output


def test_sockets_only_of_the_families_a_network_namespace_isolates(
    profile: dict[str, Any],
) -> None:
    rules = rules_for(profile, "socket")
    assert all(r["action"] == "SCMP_ACT_ALLOW" and len(r["args"]) == 1 for r in rules)
    assert {r["args"][0]["value"] for r in rules} == {1, 2, 10, 16}  # UNIX, INET, INET6, NETLINK
    assert {(r["args"][0]["index"], r["args"][0]["op"]) for r in rules} == {(0, "SCMP_CMP_EQ")}
    assert rules_for(profile, "socketcall") == []  # its arguments are out of seccomp's sight


SOCKETS = """
import socket
for family, kind in [("AF_UNIX", "SOCK_STREAM"), ("AF_INET", "SOCK_STREAM"),
                     ("AF_INET6", "SOCK_DGRAM"), ("AF_NETLINK", "SOCK_RAW"),
                     ("AF_VSOCK", "SOCK_STREAM"), ("AF_PACKET", "SOCK_DGRAM"),
                     ("AF_ALG", "SOCK_SEQPACKET"), ("AF_KEY", "SOCK_RAW")]:
    try:
        socket.socket(getattr(socket, family), getattr(socket, kind)).close()
        print(family, "ok")
    except OSError as e:
        print(family, e.errno)
"""


@pytest.mark.docker
def test_a_vsock_to_the_hypervisor_or_any_other_family_cannot_be_opened(
    engine: docker.DockerClient, agent_image: str
) -> None:
    status, output = run_confined(engine, agent_image, ["python3", "-c", SOCKETS])
    assert status == 0, output
    opened = dict(line.split() for line in output.splitlines())
    assert {f for f, result in opened.items() if result == "ok"} == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }, output
    # Refused by the filter (the engine's loader answers EPERM where no rule matched an
    # argument), before the kernel could say whether it has the family at all.
    assert {opened[f] for f in ("AF_VSOCK", "AF_PACKET", "AF_ALG", "AF_KEY")} <= {
        str(EPERM),
        str(ENOSYS),
    }, output


LEASE = """
import fcntl, os
fd = os.open("/dev/shm/f", os.O_CREAT | os.O_RDONLY, 0o644)
fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)  # ordinary fcntl still works
fcntl.flock(fd, fcntl.LOCK_SH)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    print("lease taken")
except OSError as e:
    print("lease refused", e.errno)
"""


@pytest.mark.docker
def test_no_lease_on_a_file_the_user_will_write(
    engine: docker.DockerClient, agent_image: str
) -> None:
    status, output = run_confined(engine, agent_image, ["python3", "-c", LEASE])
    assert status == 0, output
    assert output.split()[:2] == ["lease", "refused"], output
