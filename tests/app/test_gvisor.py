"""gVisor's pure parts (app/gvisor.py, and its checks in app/sandbox.py), by tables: how runsc
must be registered, the pids limit, and what the self-check verifies of runsc's sandbox from
the host. A real runsc session: tests/ui/test_gvisor_session.py."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from app.gvisor import (
    NOTE,
    RUNTIME_ARGS,
    host_pids,
    registration,
    registration_fix,
    registration_problem,
)
from app.profiles import parse_profile
from app.sandbox import Expectation, GvisorProcess, SandboxReport, check_sandbox
from tests.app.sessions.memory_engine import honest_report
from tests.app.test_sandbox import SPEC

GVISOR_SPEC = dataclasses.replace(SPEC, runtime="runsc")
EXPECTED = Expectation(GVISOR_SPEC, GVISOR_SPEC.entrypoint)
ARGV = (
    "runsc-sandbox",
    "--root=/var/run/docker/runtime-runc/moby",
    "--host-uds=open",
    "--host-fifo=open",
    "--network=host",
    "--oci-seccomp=true",  # how runsc writes a boolean flag
    "--log-fd=3",
    "boot",
    "--bundle=/x",
)
SANDBOX = GvisorProcess("runsc", ARGV, 1, 2, False)


@pytest.mark.parametrize(
    ("runtimes", "problem"),
    [
        ({"runc": {"path": "runc"}}, "runsc is not registered with the engine"),
        ({"runsc": {"path": "/usr/bin/runsc"}}, "registered without " + " ".join(RUNTIME_ARGS)),
        (
            {"runsc": {"path": "runsc", "runtimeArgs": ["--network=host", "--host-uds=open"]}},
            "registered without --host-fifo=open --oci-seccomp",
        ),
        ({"runsc": {"path": "runsc", "runtimeArgs": list(RUNTIME_ARGS)}}, None),
        (
            {"runsc": {"path": "runsc", "runtimeArgs": [*RUNTIME_ARGS[:3], "--oci-seccomp=true"]}},
            None,
        ),
        ({"runsc": "?"}, "the engine does not say how it runs runsc"),
    ],
)
def test_runsc_must_be_registered_with_the_flags_sessions_need(
    runtimes: dict[str, Any], problem: str | None
) -> None:
    found = registration_problem(runtimes)
    assert found == problem if problem is None else problem in (found or "")


def test_the_fix_is_the_exact_daemon_json_entry() -> None:
    fix = registration_fix()
    snippet = fix[fix.index("{") : fix.rindex("}") + 1]
    assert json.loads(snippet) == {"runtimes": registration()}
    assert registration_problem(json.loads(snippet)["runtimes"]) is None


@pytest.mark.parametrize(("pids", "host"), [(64, 128 + 8 * 64), (16, 256)])
def test_the_pids_limit_leaves_room_for_gvisors_own_threads(pids: int, host: int) -> None:
    from app.container import build_spec

    assert host_pids(pids) == host
    text = f'name = "g"\nimage = "i"\nruntime = "runsc"\n[resources]\npids = {pids}\n'
    spec = build_spec(
        profile=parse_profile(text, "g.toml"),
        session="s",
        image="i",
        command=None,
        identity=SPEC.identity,
        anchors=(),
        first_grant=None,
        seccomp="{}",
        labels={},
    )
    assert spec.pids == host and spec.runtime == "runsc"


def report(process: GvisorProcess | None, **engine: Any) -> SandboxReport:
    honest = honest_report(GVISOR_SPEC.create_kwargs())
    view = dataclasses.replace(honest.engine, **engine)
    return dataclasses.replace(honest, engine=view, gvisor=process)


@pytest.mark.parametrize(
    ("process", "engine", "failed"),
    [
        (SANDBOX, {}, []),
        (
            None,
            {},
            ["gvisor: the container's first process is runsc's sandbox"],
        ),
        (
            dataclasses.replace(SANDBOX, executable="python3", argv=("python3",)),
            {},
            ["gvisor: the container's first process is runsc's sandbox"]
            + [f"gvisor: sandbox runs with {a}" for a in RUNTIME_ARGS],
        ),
        (
            dataclasses.replace(SANDBOX, argv=tuple(a for a in ARGV if a != "--oci-seccomp=true")),
            {},
            ["gvisor: sandbox runs with --oci-seccomp"],
        ),
        (
            dataclasses.replace(
                SANDBOX,
                argv=(*(a for a in ARGV[:7] if "seccomp" not in a), "boot", "--oci-seccomp"),
            ),
            {},
            ["gvisor: sandbox runs with --oci-seccomp"],  # a subcommand's flag is not runsc's
        ),
        (
            dataclasses.replace(SANDBOX, host_network=True),
            {},
            ["gvisor: network namespace (no host socket reachable)"],
        ),
        (
            dataclasses.replace(SANDBOX, seccomp=0, no_new_privs=0),
            {},
            ["gvisor: sandbox NoNewPrivs", "gvisor: sandbox Seccomp (gVisor's own filter)"],
        ),
        # The engine's word still counts in full: a runtime it ignored, a dropped filter.
        (SANDBOX, {"runtime": "runc"}, ["engine: runtime"]),
        (SANDBOX, {"security_opt": ("no-new-privileges:true",)}, ["engine: seccomp"]),
    ],
)
def test_the_self_check_verifies_runscs_sandbox_from_the_host(
    process: GvisorProcess | None, engine: dict[str, Any], failed: list[str]
) -> None:
    checks = check_sandbox(EXPECTED, report(process, **engine))
    assert [c.name for c in checks if not c.passed] == failed
    # gVisor's /proc is not the agent's: no kernel check is made of it.
    assert not any(c.name.startswith("kernel:") for c in checks)


def test_the_note_names_what_differs() -> None:
    for part in ("seccomp is the profile's filter applied by gVisor", "pids limit", "uid"):
        assert part in NOTE
