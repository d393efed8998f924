"""Every hardening control of DESIGN.md, as the engine receives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.console import Terminal
from app.container import NOBODY, BindMount, ContainerAdditions, Identity, build_spec
from app.profiles import parse_profile

PROFILE = parse_profile(
    'name = "p"\nimage = "img"\ncommand = ["run"]\nenv = { FOO = "bar" }\n'
    '[resources]\nmemory = "300m"\ncpus = 0.5\npids = 99\ntmpfs = "8m"\n',
    "p.toml",
)


def spec_kwargs(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "profile": PROFILE,
        "session": "s1",
        "image": "sha256:abc",
        "command": None,
        "identity": Identity(1000, 1000),
        "anchors": [(Path("/state/s1/view/home/u/notes"), Path("/home/u/notes"))],
        "first_grant": None,
        "seccomp": '{"defaultAction": "SCMP_ACT_ERRNO"}',
        "labels": {"org.airlock.session": "s1"},
    }
    arguments.update(overrides)
    spec = build_spec(**arguments)  # type: ignore[arg-type]
    kwargs = spec.create_kwargs()
    return {**kwargs, **kwargs.pop("host_config")}


def test_hardening_controls() -> None:
    kwargs = spec_kwargs()
    assert kwargs["user"] == "1000:1000"
    assert kwargs["read_only"] is True
    assert kwargs["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in kwargs["security_opt"]  # type: ignore[operator]
    assert 'seccomp={"defaultAction": "SCMP_ACT_ERRNO"}' in kwargs["security_opt"]  # type: ignore[operator]
    assert kwargs["network_mode"] == "none"
    assert kwargs["pids_limit"] == 99
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 300 * 1024**2
    assert kwargs["nano_cpus"] == 500_000_000
    assert kwargs["tmpfs"] == {
        "/tmp": f"rw,nosuid,nodev,noexec,size={8 * 1024**2}",
        # The agent's own home: programs may run there, it is size-limited, and it is theirs.
        "/home/airlock": f"rw,nosuid,nodev,exec,size={256 * 1024**2},mode=0700,uid=1000,gid=1000",
    }
    assert kwargs["ipc_mode"] == "private"
    assert kwargs["log_config"] == {"type": "none", "config": {}}  # no copy of its output
    assert "privileged" not in kwargs and "cap_add" not in kwargs and "devices" not in kwargs
    assert "volumes" not in kwargs and "network" not in kwargs


def test_only_the_view_is_mounted_read_only() -> None:
    (mount,) = spec_kwargs()["mounts"]  # type: ignore[misc]
    assert mount["Source"] == "/state/s1/view/home/u/notes"
    assert mount["Target"] == "/home/u/notes"
    assert mount["Type"] == "bind" and mount["ReadOnly"] is True


def test_environment_is_clean() -> None:
    environment = spec_kwargs()["environment"]
    assert environment == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/home/airlock",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "AIRLOCK_SESSION": "s1",
        "FOO": "bar",
    }


@pytest.mark.parametrize(
    ("first_grant", "workdir"),
    [(None, "/tmp"), (Path("/"), "/"), (Path("/etc/hostname"), "/etc")],
)
def test_workdir_is_the_first_grant(first_grant: Path | None, workdir: str) -> None:
    assert spec_kwargs(first_grant=first_grant)["working_dir"] == workdir


def test_command_override_and_runtime() -> None:
    assert spec_kwargs()["command"] == ["run"]
    assert spec_kwargs(command=["sh"])["command"] == ["sh"]
    assert "runtime" not in spec_kwargs()
    runsc = PROFILE.model_copy(update={"runtime": "runsc"})
    assert spec_kwargs(profile=runsc)["runtime"] == "runsc"


def test_root_caller_never_runs_the_agent_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.getuid", lambda: 0)
    assert Identity.for_caller({}) == Identity(NOBODY, NOBODY)
    assert Identity.for_caller({"SUDO_UID": "1000", "SUDO_GID": "1001"}) == Identity(1000, 1001)
    assert Identity.for_caller({"SUDO_UID": "0", "SUDO_GID": "0"}) == Identity(NOBODY, NOBODY)


def test_a_kept_home_replaces_the_fresh_one() -> None:
    kept = ContainerAdditions(
        mounts=(BindMount(Path("/state/homes/p"), Path("/home/airlock"), read_only=False),)
    )
    kwargs = spec_kwargs(additions=[kept])
    assert "/home/airlock" not in kwargs["tmpfs"]  # type: ignore[operator]
    assert any(m["Target"] == "/home/airlock" and m["ReadOnly"] is False for m in kwargs["mounts"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("terminal", "tty", "stdin"),
    [
        (None, False, False),
        (Terminal(False), False, True),
        (Terminal(True, term="screen"), True, True),
    ],
)
def test_a_terminal_and_stdin_only_when_asked(
    terminal: Terminal | None, tty: bool, stdin: bool
) -> None:
    kwargs = spec_kwargs(terminal=terminal)
    assert (kwargs["tty"], kwargs["stdin_open"], kwargs["detach"]) == (tty, stdin, not stdin)
    assert ("TERM" in kwargs["environment"]) is tty  # type: ignore[operator]
