"""The self-check's pure parts, by tables: /proc text parsed into facts, and which check a
difference between what was asked for and what is found fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from app.container import BindMount, ContainerSpec, Identity, VolumeMount
from app.engine_kind import PODMAN_DEFAULT_CAPABILITIES, EngineKind, podman_tmpfs, seccomp_name
from app.sandbox import (
    Expectation,
    KernelReport,
    Listener,
    MountFact,
    ProcessFacts,
    SandboxReport,
    check_sandbox,
    gate_command,
    parse_interfaces,
    parse_limits,
    parse_listeners,
    parse_mountinfo,
    parse_route_devices,
    summary,
)
from app.sessions.verify import refusal
from tests.app.sessions.memory_engine import honest_report

STATUS = """Name:\tdocker-init
Uid:\t1000\t1000\t1000\t1000
Gid:\t1000\t1000\t1000\t1000
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000200000
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
"""

MOUNTINFO = """\
500 400 0:50 / / ro,relatime - overlay overlay rw,lowerdir=x
501 500 0:51 / /proc rw,nosuid - proc proc rw
502 500 0:52 / /tmp rw,nosuid,nodev,noexec - tmpfs tmpfs rw,size=65536k
503 500 8:1 /home/u/my\\040notes /home/u/my\\040notes ro,relatime - ext4 /dev/sda1 rw
504 500 8:1 /x /home/u/my\\040notes rw,relatime - ext4 /dev/sda1 rw
"""

NET_DEV = """Inter-|   Receive
 face |bytes    packets
    lo:       0       0    0    0    0     0          0         0
airlock0:     0       0    0    0    0     0          0         0
"""

ROUTE = """Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT
airlock0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0
"""
IPV6_ROUTE = (
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000001 00000000 80200001 lo\n"
)
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:0C38 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000
   1: 0100007F:9C40 0100007F:0C38 01 00000000:00000000 00:00000000 00000000  1000
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A
"""


def test_proc_status_is_read_as_the_kernel_writes_it() -> None:
    facts = ProcessFacts.parse(7, STATUS)
    assert facts.uids == (1000,) * 4 and facts.gids == (1000,) * 4
    assert facts.capabilities["CapBnd"] == 1 << 21 and facts.capabilities["CapEff"] == 0
    assert (facts.no_new_privs, facts.seccomp) == (1, 2)


def test_the_mount_table_keeps_the_visible_mount_of_each_point() -> None:
    mounts = {m.target: m for m in parse_mountinfo(MOUNTINFO)}
    assert mounts["/"].read_only and mounts["/"].kind == "overlay"
    assert not mounts["/tmp"].read_only
    # The escaped space is a space; of the two mounts stacked there, the later one shows.
    assert not mounts["/home/u/my notes"].read_only


def test_interfaces_routes_and_listeners() -> None:
    assert parse_interfaces(NET_DEV) == ("airlock0", "lo")
    assert parse_route_devices(ROUTE, IPV6_ROUTE) == ("airlock0", "lo")
    assert parse_listeners("tcp", TCP) == (Listener("tcp", "127.0.0.1", 3128),)
    assert parse_listeners("tcp6", TCP6) == (
        Listener("tcp6", "0000:0000:0000:0000:0000:0000:0000:0001", 8080),
    )


def test_the_gate_runs_the_images_entrypoint_with_the_command() -> None:
    entrypoint, command = gate_command("/run/airlock/gate/go", ["/init"], ["agent", "-x"])
    assert entrypoint[:2] == ["/bin/sh", "-c"] and entrypoint[-1] == "/run/airlock/gate/go"
    assert command == ["/init", "agent", "-x"]


SPEC = ContainerSpec(
    name="airlock-s1",
    image="sha256:abc",
    command=("agent",),
    identity=Identity(1000, 1000),
    environment={},
    workdir="/tmp",
    mounts=(
        BindMount(Path("/v/notes"), Path("/home/u/notes")),
        BindMount(Path("/s/saves"), Path("/run/airlock/save"), read_only=False),
    ),
    volumes=(VolumeMount("airlock-s1-r1", Path("/home/u/code")),),
    labels={},
    memory=2 << 30,
    nano_cpus=2_000_000_000,
    pids=256,
    tmpfs_size=1 << 26,
    seccomp='{"defaultAction":"SCMP_ACT_ERRNO"}',
    runtime=None,
    entrypoint=("/bin/sh", "-c", "gate", "/run/airlock/gate/go"),
)
EXPECTED = Expectation(SPEC, SPEC.entrypoint)


def honest() -> SandboxReport:
    return honest_report(SPEC.create_kwargs())


def engine(**fields: Any) -> SandboxReport:
    report = honest()
    return dataclasses.replace(report, engine=dataclasses.replace(report.engine, **fields))


def kernel(**fields: Any) -> SandboxReport:
    report = honest()
    return dataclasses.replace(report, kernel=dataclasses.replace(report.kernel, **fields))


def process(**fields: Any) -> SandboxReport:
    report = honest()
    changed = dataclasses.replace(report.kernel.processes[0], **fields)
    return dataclasses.replace(
        report, kernel=dataclasses.replace(report.kernel, processes=(changed,))
    )


def with_mount(target: str, read_only: bool = True) -> SandboxReport:
    report = honest()
    mounts = (
        *[m for m in report.kernel.mounts if m.target != target],
        MountFact(target, read_only, "ext4"),
    )
    return dataclasses.replace(report, kernel=dataclasses.replace(report.kernel, mounts=mounts))


def test_an_honest_report_passes_every_check() -> None:
    checks = check_sandbox(EXPECTED, honest())
    assert [c.describe() for c in checks if not c.passed] == []
    assert summary(checks) == f"verified ({len(checks)} checks)"


CAPS = dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0)

BROKEN = [
    ("user", engine(user="0:0"), "engine: user"),
    ("writable root", engine(read_only=False), "engine: read-only root"),
    ("privileged", engine(privileged=True), "engine: privileged"),
    ("capability added", engine(cap_add=("NET_ADMIN",)), "engine: capabilities added"),
    ("capabilities kept", engine(cap_drop=()), "engine: capabilities dropped"),
    (
        "seccomp unconfined",
        engine(security_opt=("no-new-privileges:true", "seccomp=unconfined")),
        "engine: seccomp",
    ),
    (
        "no no-new-privs",
        engine(security_opt=(f"seccomp={SPEC.seccomp}",)),
        "engine: no-new-privileges",
    ),
    ("memory dropped", engine(memory=0), "engine: memory limit"),
    ("pids dropped", engine(pids=0), "engine: pids limit"),
    ("network", engine(network_mode="host"), "engine: network mode"),
    ("pid namespace", engine(pid_mode="host"), "engine: pid mode"),
    ("a device", engine(devices=1), "engine: devices"),
    ("no gate", engine(entrypoint=()), "engine: entrypoint"),
    (
        "extra mount",
        engine(
            mounts=(*honest().engine.mounts, MountFact("/x", False, "bind", "/var/run/docker.sock"))
        ),
        "engine: mounts",
    ),
    (
        "grant written",
        engine(
            mounts=tuple(dataclasses.replace(m, read_only=False) for m in honest().engine.mounts)
        ),
        "engine: mounts",
    ),
    ("no process", kernel(processes=()), "kernel: the container's processes"),
    ("root uid", process(uids=(0, 0, 0, 0)), "kernel: pid 2 uid"),
    ("effective cap", process(capabilities=dict(CAPS, CapEff=1 << 21)), "kernel: pid 2 CapEff"),
    ("bounding cap", process(capabilities=dict(CAPS, CapBnd=1 << 12)), "kernel: pid 2 CapBnd"),
    ("unread caps", process(capabilities={}), "kernel: pid 2 capability sets read"),
    ("no nnp", process(no_new_privs=0), "kernel: pid 2 NoNewPrivs"),
    ("seccomp off", process(seccomp=0), "kernel: pid 2 Seccomp"),
    ("root writable", with_mount("/", read_only=False), "kernel: mount /"),
    ("grant writable", with_mount("/home/u/notes", read_only=False), "kernel: mount /home/u/notes"),
    ("extra kernel mount", with_mount("/var/run/docker.sock"), "kernel: mounts beyond the grants"),
    ("an uplink", kernel(interfaces=("eth0", "lo"), route_devices=("eth0",)), "kernel: interfaces"),
    (
        "a listener",
        kernel(listeners=(Listener("tcp", "0.0.0.0", 22),)),
        "kernel: listening sockets",
    ),
    ("host network", kernel(host_network=True), "kernel: network namespace"),
    ("unknown network", kernel(host_network=None), "kernel: network namespace"),
]


@pytest.mark.parametrize(
    ("report", "check"), [(r, c) for _, r, c in BROKEN], ids=[name for name, _, _ in BROKEN]
)
def test_a_difference_fails_the_check_that_names_it(report: SandboxReport, check: str) -> None:
    failed = [c for c in check_sandbox(EXPECTED, report) if not c.passed]
    assert failed and failed[0].name.startswith(check), [c.describe() for c in failed]
    assert summary(failed).startswith(f"refused: {check}")


def test_a_route_out_is_named_with_its_device() -> None:
    report = kernel(route_devices=("eth0", "lo"))
    failed = [c.describe() for c in check_sandbox(EXPECTED, report) if not c.passed]
    assert failed == ["kernel: routes out: expected none, found through eth0"]


def test_the_proxy_must_answer_and_the_witness_device_is_expected() -> None:
    expected = Expectation(SPEC, SPEC.entrypoint, ("lo", "airlock0"), (3128,))
    answering = kernel(
        interfaces=("airlock0", "lo"),
        route_devices=("airlock0", "lo"),
        listeners=(Listener("tcp", "127.0.0.1", 3128),),
    )
    assert all(c.passed for c in check_sandbox(expected, answering))
    silent = kernel(interfaces=("airlock0", "lo"), route_devices=("airlock0",))
    failed = [c.name for c in check_sandbox(expected, silent) if not c.passed]
    assert failed == ["kernel: listening sockets (the proxy answers, nothing else does)"]


def test_a_kernel_report_of_nothing_fails() -> None:
    nothing = KernelReport((), (), (), (), (), None)
    failed = [
        c
        for c in check_sandbox(EXPECTED, dataclasses.replace(honest(), kernel=nothing))
        if not c.passed
    ]
    assert failed[0].name == "kernel: the container's processes"


PODMAN = EngineKind("podman", "4.3.1", rootless=True, cgroup="2")


def podman_honest(spec: ContainerSpec = SPEC, **fields: Any) -> SandboxReport:
    """What rootless Podman reports for a container made as asked: its own words for the
    same isolation (app/engine_kind.py), the profile as a file named by its digest."""
    report = honest_report(spec.create_kwargs())
    tmpfs = {
        t: o.replace(",U", "") + ",rprivate,tmpcopyup"
        for t, o in podman_tmpfs(spec.tmpfs()).items()
    }
    view = dataclasses.replace(
        report.engine,
        ipc_mode="shareable",
        pid_mode="private",
        userns_mode="private" if spec.network_mode == "none" else spec.network_mode,
        cap_drop=PODMAN_DEFAULT_CAPABILITIES,
        tmpfs=tuple(sorted(tmpfs)),
        tmpfs_options=tmpfs,
        security_opt=(
            "no-new-privileges",
            f"seccomp=/run/user/1000/airlock/seccomp/{seccomp_name(spec.seccomp)}",
        ),
    )
    view = dataclasses.replace(view, **fields)
    mounts = (
        *report.kernel.mounts,
        *(MountFact(t, False, "tmpfs") for t in ("/run", "/var/tmp")),
        *(MountFact(t, True, "bind") for t in ("/run/podman-init", "/etc/passwd")),
    )
    return SandboxReport(view, dataclasses.replace(report.kernel, mounts=mounts), PODMAN)


def test_podman_reporting_the_same_sandbox_in_its_own_words_passes() -> None:
    checks = check_sandbox(EXPECTED, podman_honest())
    assert [c.describe() for c in checks if not c.passed] == []


def test_podmans_words_do_not_pass_as_dockers() -> None:
    report = dataclasses.replace(podman_honest(), kind=EngineKind("docker", "20.10"))
    failed = {c.name for c in check_sandbox(EXPECTED, report) if not c.passed}
    assert {
        "engine: ipc mode",
        "engine: pid mode",
        "engine: seccomp",
        "engine: capabilities dropped",
    } <= failed


PODMAN_BROKEN = [
    # Podman's own /var/tmp (exec-able, no size limit) where Airlock's should be.
    (
        "its own /var/tmp",
        podman_honest(
            tmpfs_options={
                **podman_honest().engine.tmpfs_options,
                "/var/tmp": "rw,rprivate,nosuid,nodev,tmpcopyup",
            }
        ),
        ["engine: tmpfs"],
    ),
    # Rootless on cgroup v1: limits and ulimits dropped without an error.
    (
        "limits dropped",
        podman_honest(memory=0, memory_swap=0, nano_cpus=0, pids=0, ulimits=()),
        [
            "engine: memory limit",
            "engine: memory+swap limit",
            "engine: cpus (nano)",
            "engine: pids limit",
            "engine: ulimits",
        ],
    ),
    (
        "another profile",
        podman_honest(
            security_opt=("no-new-privileges", "seccomp=/run/user/1000/airlock/seccomp/other.json")
        ),
        ["engine: seccomp"],
    ),
    ("the user's namespace", podman_honest(userns_mode="host"), ["engine: userns mode"]),
    (
        "a capability kept",
        podman_honest(cap_drop=PODMAN_DEFAULT_CAPABILITIES[1:]),
        ["engine: capabilities dropped"],
    ),
]


@pytest.mark.parametrize(
    ("report", "names"),
    [(r, n) for _, r, n in PODMAN_BROKEN],
    ids=[name for name, _, _ in PODMAN_BROKEN],
)
def test_what_podman_drops_or_changes_is_caught(report: SandboxReport, names: list[str]) -> None:
    assert [c.name for c in check_sandbox(EXPECTED, report) if not c.passed] == names


def test_a_runtime_podman_ignores_is_caught() -> None:
    spec = dataclasses.replace(SPEC, runtime="kata")  # runsc's checks: tests/app/test_gvisor.py
    failed = [
        c.describe()
        for c in check_sandbox(
            Expectation(spec, spec.entrypoint), podman_honest(spec, runtime="oci")
        )
        if not c.passed
    ]
    assert failed == ["engine: runtime: expected kata, found oci"]


def test_dropped_ulimits_are_caught_by_the_kernel_too() -> None:
    report = process(limits={"nofile": "20000:20000", "core": "0:-1"})
    failed = [c.describe() for c in check_sandbox(EXPECTED, report) if not c.passed]
    assert failed == [
        'kernel: pid 2 limits: expected {"core": "0:0", "nofile": "4096:4096"}, '
        'found {"core": "0:-1", "nofile": "20000:20000"}'
    ]


LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max core file size        0                    unlimited            bytes
Max open files            4096                 4096                 files
"""


def test_proc_limits_are_read_as_the_kernel_writes_them() -> None:
    assert parse_limits(LIMITS) == {"core": "0:-1", "nofile": "4096:4096"}


def test_the_refusal_names_the_engine_and_why_limits_cannot_hold() -> None:
    v1 = EngineKind("podman", "4.3.1", rootless=True, cgroup="1")
    failed = [c for c in check_sandbox(EXPECTED, podman_honest(memory=0, pids=0)) if not c.passed]
    text = refusal("s1", v1, failed)
    assert text.startswith(
        "session s1 refused: the sandbox rootless Podman 4.3.1 (cgroup v1) "
        "made is not what was asked for — engine: memory limit: expected "
    )
    assert "(and 1 more: engine: pids limit)" in text
    assert text.endswith(
        "a rootless engine on cgroup v1 cannot enforce resource limits (see `airlock doctor`)"
        '; a profile can accept running without them: [sandbox] accept_weaker = ["limits"]'
    )
