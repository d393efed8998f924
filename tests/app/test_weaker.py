"""The differences a profile may accept (`[sandbox] accept_weaker`), by tables: which names
a profile may give, which failed checks each covers, and what is said."""

from __future__ import annotations

import pytest

from app.engine_kind import EngineKind
from app.errors import ProfileError
from app.profiles import parse_profile
from app.sandbox import Check
from app.weaker import judge, refusable, summary, warning

PODMAN = EngineKind("podman", "4.3.1", rootless=True, cgroup="1")


def failed(*names: str) -> list[Check]:
    return [Check(name, "asked", "other") for name in names]


LIMITS = (
    "engine: memory limit",
    "engine: memory+swap limit",
    "engine: cpus (nano)",
    "engine: pids limit",
    "engine: ulimits",
    "kernel: pid 4711 limits",
)


def profile(accept: str) -> str:
    return f'name = "x"\nimage = "i"\n[sandbox]\naccept_weaker = {accept}\n'


@pytest.mark.parametrize(
    ("accept", "error"),
    [
        ('["seccomp"]', "'seccomp' is never accepted weaker"),
        ('["capabilities"]', "'capabilities' is never accepted weaker"),
        ('["mounts"]', "'mounts' is never accepted weaker"),
        ('["network"]', "'network' is never accepted weaker"),
        ('["runtime"]', "'runtime' is never accepted weaker"),
        ('["limits", "user"]', "accept_weaker[1]: 'user' is never accepted weaker"),
        ('["memory"]', "unknown difference 'memory': only limits can be accepted"),
        ('["limits", "limits"]', "names a difference twice"),
        ('"limits"', "sandbox.accept_weaker"),
    ],
)
def test_a_profile_may_name_only_known_differences(accept: str, error: str) -> None:
    with pytest.raises(ProfileError, match=r"^t\.toml: sandbox\.accept_weaker") as raised:
        parse_profile(profile(accept), "t.toml")
    assert error in str(raised.value)


def test_nothing_is_accepted_by_default() -> None:
    assert parse_profile('name = "x"\nimage = "i"\n', "t.toml").sandbox.accept_weaker == ()
    accepted = parse_profile(profile('["limits"]'), "t.toml").sandbox.accept_weaker
    assert accepted == ("limits",)


@pytest.mark.parametrize(
    ("failures", "accept", "runs", "refused"),
    [
        (LIMITS, ("limits",), True, ()),
        (LIMITS, (), False, LIMITS),
        (LIMITS[:1], ("limits",), True, ()),
        ((), (), True, ()),
        # Anything beyond the limits still refuses, with only that named.
        ((*LIMITS, "engine: seccomp"), ("limits",), False, ("engine: seccomp",)),
        (("engine: capabilities added",), ("limits",), False, ("engine: capabilities added",)),
        (("kernel: pid 7 Seccomp",), ("limits",), False, ("kernel: pid 7 Seccomp",)),
        (("engine: mounts",), ("limits",), False, ("engine: mounts",)),
        (("engine: tmpfs",), ("limits",), False, ("engine: tmpfs",)),
        (("engine: runtime",), ("limits",), False, ("engine: runtime",)),
        (("kernel: pid 7 uid",), ("limits",), False, ("kernel: pid 7 uid",)),
        # A name that looks like a limit check but is not one.
        (
            ("engine: memory limit of something",),
            ("limits",),
            False,
            ("engine: memory limit of something",),
        ),
        (("kernel: pid 7 limits!",), ("limits",), False, ("kernel: pid 7 limits!",)),
        # A name no profile can hold (validated away) accepts nothing here either.
        (LIMITS[:1], ("seccomp",), False, LIMITS[:1]),
    ],
)
def test_what_is_accepted(
    failures: tuple[str, ...], accept: tuple[str, ...], runs: bool, refused: tuple[str, ...]
) -> None:
    verdict = judge(failed(*failures), accept)
    assert verdict.runs is runs
    assert tuple(c.name for c in verdict.refused) == refused
    assert verdict.weaker == (("limits",) if verdict.accepted else ())
    assert len(verdict.accepted) + len(verdict.refused) == len(failures)


@pytest.mark.parametrize(
    ("failures", "acceptable"),
    [
        (LIMITS, ("limits",)),
        ((*LIMITS, "engine: seccomp"), ()),
        (("engine: network mode",), ()),
    ],
)
def test_a_refusal_says_what_could_be_accepted(
    failures: tuple[str, ...], acceptable: tuple[str, ...]
) -> None:
    assert refusable(failed(*failures)) == acceptable


def test_the_warning_names_the_engine_and_what_it_lacks() -> None:
    text = warning(PODMAN, ("limits",))
    assert text == (
        "weaker than asked: rootless Podman 4.3.1 (cgroup v1) does not enforce memory, pids "
        "and CPU limits and ulimits (accepted by the profile: [sandbox] accept_weaker)"
    )
    checks = [*failed(*LIMITS), Check("engine: seccomp", "x", "x")]
    verdict = judge(failed(*LIMITS), ("limits",))
    assert summary(PODMAN, checks, verdict) == f"{text}; 1 of 7 checks passed"
