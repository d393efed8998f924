"""What a profile may accept an engine leaving out of the sandbox (`[sandbox] accept_weaker`):
the named differences, which self-check failures each one covers, and the words that say a
session runs with less than was asked. Pure functions, tested by tables."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.engine_kind import EngineKind

if TYPE_CHECKING:  # app/profiles.py validates with this module; app/sandbox.py needs profiles
    from app.sandbox import Check


@dataclass(frozen=True, slots=True)
class Weakening:
    """One difference a person may knowingly accept: its name in a profile, what it takes
    away (for the warning), and the checks whose failure it covers."""

    name: str
    takes_away: str
    checks: re.Pattern[str]

    def covers(self, check: Check) -> bool:
        return bool(self.checks.fullmatch(check.name))


# Only the resource limits: without them an agent can use the machine's memory, processes
# and CPU (a denial of service to the desktop), but it sees and reaches nothing more. Rootless
# engines on cgroup v1 cannot hold them (app/engine_kind.py: `limits_enforced`).
WEAKENINGS = {
    w.name: w
    for w in (
        Weakening(
            "limits",
            "memory, pids and CPU limits and ulimits",
            re.compile(
                r"engine: (memory|memory\+swap|pids) limit|engine: cpus \(nano\)"
                r"|engine: ulimits|kernel: pid \d+ limits"
            ),
        ),
    )
}

# What keeps the agent in: never accepted weaker, whatever a profile says. Named so that a
# profile asking for one is told why rather than "unknown".
NEVER_WEAKER = frozenset(
    {
        "seccomp",
        "capabilities",
        "mounts",
        "network",
        "user",
        "runtime",
        "read-only",
        "no-new-privileges",
        "namespaces",
        "devices",
        "tmpfs",
    }
)


def accepted_name(value: str) -> str:
    """Validates one entry of `accept_weaker` (untrusted profile text)."""
    if value in WEAKENINGS:
        return value
    known = ", ".join(sorted(WEAKENINGS))
    if value in NEVER_WEAKER:
        raise ValueError(
            f"{value!r} is never accepted weaker: a session without it is refused "
            f"(only {known} can be accepted)"
        )
    raise ValueError(f"unknown difference {value!r}: only {known} can be accepted")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The failed checks of one session, split: those the profile accepted (by name of the
    weakening that covers them) and those that still refuse it."""

    accepted: tuple[Check, ...]
    refused: tuple[Check, ...]
    weaker: tuple[str, ...]  # the weakenings in force, by name, sorted

    @property
    def runs(self) -> bool:
        return not self.refused


def judge(failed: Sequence[Check], accept: Collection[str]) -> Verdict:
    """Which failures the profile's `accept_weaker` covers. A session runs only when every
    failed check is covered."""
    allowed = [WEAKENINGS[name] for name in sorted(accept) if name in WEAKENINGS]
    accepted: list[Check] = []
    refused: list[Check] = []
    weaker: set[str] = set()
    for check in failed:
        covering = [w.name for w in allowed if w.covers(check)]
        if covering:
            accepted.append(check)
            weaker.update(covering)
        else:
            refused.append(check)
    return Verdict(tuple(accepted), tuple(refused), tuple(sorted(weaker)))


def refusable(failed: Sequence[Check]) -> tuple[str, ...]:
    """The weakenings that would cover every failed check, if there are such (the refusal
    then says how a person could accept them); () if any failure is never acceptable."""
    verdict = judge(failed, WEAKENINGS)
    return verdict.weaker if verdict.runs else ()


def warning(engine: EngineKind, weaker: Sequence[str]) -> str:
    """One line: what the sandbox lacks and who allowed it, e.g. "weaker than asked:
    rootless Podman 4.3.1 (cgroup v1) does not enforce memory, pids and CPU limits and
    ulimits (accepted by the profile: [sandbox] accept_weaker)"."""
    lacks = "; ".join(WEAKENINGS[name].takes_away for name in weaker if name in WEAKENINGS)
    return (
        f"weaker than asked: {engine.describe()} does not enforce {lacks} "
        "(accepted by the profile: [sandbox] accept_weaker)"
    )


def summary(engine: EngineKind, checks: Sequence[Check], verdict: Verdict) -> str:
    """The sessions list's Sandbox text for a session that runs weaker than asked."""
    passed = sum(1 for c in checks if c.passed)
    return f"{warning(engine, verdict.weaker)}; {passed} of {len(checks)} checks passed"
