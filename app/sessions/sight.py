"""What a running session can see right now: its grants in force (where they are inside),
the hosts and routes it may reach, its uploads held for an answer, and its limits: a pure
function (`session_sight`) over the grants in force, what the session was launched with and
the questions waiting, and `read_sight`, which reads the grants from the store for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.consent import ConsentRequest, RequestKind
from app.grants import Access, Grant, Lifetime, Mode, NetworkGrant
from app.profiles import Profile
from app.sessions.model import LaunchRequest
from app.store import StateStore


@dataclass(frozen=True, slots=True)
class SeenPath:
    path: Path
    mode: Mode
    inside: str  # where the agent finds it in its container
    lifetime: Lifetime
    until: float | None


@dataclass(frozen=True, slots=True)
class Reach:
    """A host the agent may reach, or is refused, and why."""

    host: str
    ports: tuple[int, ...]
    how: str  # "allowed by its profile", "asks first", "you allowed it (session)", …


@dataclass(frozen=True, slots=True)
class HeldUpload:
    destination: str  # host:port
    size: int
    asked_at: float


@dataclass(frozen=True, slots=True)
class SessionSight:
    session: str
    profile: str
    paths: tuple[SeenPath, ...]
    hosts: tuple[Reach, ...]
    routes: tuple[tuple[str, str], ...]  # name, upstream
    uploads: tuple[HeldUpload, ...]
    limits: tuple[tuple[str, str], ...]  # what, how much (as text)


def session_sight(
    session: str,
    profile: Profile,
    timeout: float | None,
    grants: Sequence[Grant],
    locations: Mapping[str, str],
    network: Sequence[NetworkGrant],
    pending: Sequence[ConsentRequest],
) -> SessionSight:
    """`grants`: the session's file grants in force, `locations` where each is inside
    when not at its own path; `network`: the remembered network answers in force (the
    session's own, and its profile's); `pending`: the questions waiting now."""
    paths = tuple(
        SeenPath(g.path, g.mode, locations.get(g.id, str(g.path)), g.lifetime, g.expires_at)
        for g in grants
    )
    hosts: list[Reach] = [
        Reach(rule.host, rule.ports, "allowed by its profile") for rule in profile.network.allow
    ]
    hosts += [Reach(rule.host, rule.ports, "asks you first") for rule in profile.network.ask]
    for g in network:
        if g.session not in (None, session) or (g.session is None and g.profile != profile.name):
            continue
        what = "connect" if g.access is Access.CONNECT else "upload past the threshold"
        verdict = "you allowed" if g.allowed else "you refused"
        scope = "this session" if g.session else f"profile {g.profile}"
        hosts.append(Reach(g.host, (g.port,), f"{verdict} to {what} ({scope})"))
    uploads = tuple(
        HeldUpload(r.subject, _size(r.details.get("size")), r.created_at)
        for r in pending
        if r.session == session and r.kind is RequestKind.UPLOAD
    )
    resources, network_rules = profile.resources, profile.network
    limits = [
        ("memory", _bytes(resources.memory)),
        ("CPUs", f"{resources.cpus:g}"),
        ("processes", str(resources.pids)),
        ("/tmp", _bytes(resources.tmpfs)),
        ("time", f"{timeout:g} s" if timeout else "no limit"),
        ("connections at once", str(network_rules.max_connections)),
        (
            "bandwidth",
            f"{_bytes(network_rules.bandwidth)}/s" if network_rules.bandwidth else "no limit",
        ),
        (
            "uploads",
            {
                "ask": f"asks past {_bytes(profile.approval.upload_threshold)}",
                "always": "sent without asking",
                "never": "refused",
            }[profile.approval.uploads],
        ),
    ]
    return SessionSight(
        session=session,
        profile=profile.name,
        paths=paths,
        hosts=tuple(hosts),
        routes=tuple((route.name, route.upstream) for route in network_rules.routes),
        uploads=uploads,
        limits=tuple(limits),
    )


def read_sight(
    store: StateStore,
    session: str,
    launch: LaunchRequest,
    pending: Sequence[ConsentRequest],
    now: float,
) -> SessionSight:
    """`session_sight` of a session launched with `launch`, its grants in force at `now` and
    where each was placed read from the store. Blocking: from the loop, in a worker thread."""
    grants = store.session_grants(session, now)
    locations = {
        g.id: place for g in grants if (place := store.grant_location(session, g.id)) is not None
    }
    return session_sight(
        session,
        launch.profile,
        launch.timeout or launch.profile.timeout,
        grants,
        locations,
        store.network_grants(now),
        pending,
    )


def _size(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
