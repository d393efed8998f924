"""Grants: which session or profile may read (or write) which path, or connect or upload to
which host, and for how long."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.errors import GrantError


class Mode(StrEnum):
    READ = "ro"
    READ_WRITE = "rw"


class Lifetime(StrEnum):
    ONCE = "once"  # one portal answer; ends with the session at the latest
    SESSION = "session"  # until the session ends
    UNTIL = "until"  # until `expires_at`
    ALWAYS = "always"  # every session of the profile, until revoked


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    path: Path
    mode: Mode
    lifetime: Lifetime
    session: str | None
    profile: str | None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        return _in_force(self.revoked_at, self.expires_at, now)

    def covers(self, path: Path) -> bool:
        return path == self.path or self.path in path.parents


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """A path the user asked to grant, checked but not yet stored."""

    path: Path
    mode: Mode


def new_grant_id() -> str:
    return "g-" + secrets.token_hex(4)


def parse_grant_argument(argument: str, cwd: Path) -> GrantRequest:
    """`PATH`, `PATH:ro` or `PATH:rw` from the command line, made absolute and checked."""
    text, mode = argument, Mode.READ
    for suffix, suffix_mode in ((":ro", Mode.READ), (":rw", Mode.READ_WRITE)):
        if argument.endswith(suffix):
            text, mode = argument[: -len(suffix)], suffix_mode
            break
    if not text:
        raise GrantError(f"--grant {argument!r}: empty path")
    return check_grant_path(Path(os.path.expanduser(text)), mode, cwd)


def check_grant_path(path: Path, mode: Mode, cwd: Path) -> GrantRequest:
    if any(ord(c) < 32 for c in str(path)):
        raise GrantError(f"{str(path)!r}: control characters in a path are not granted")
    absolute = Path(os.path.normpath(cwd / path))
    try:
        resolved = absolute.resolve(strict=True)
    except FileNotFoundError as e:
        raise GrantError(f"{absolute}: no such file or directory") from e
    except (OSError, RuntimeError) as e:
        raise GrantError(f"{absolute}: cannot resolve: {e}") from e
    if resolved == Path("/"):
        raise GrantError("/: granting the whole file system defeats the sandbox")
    if not (resolved.is_dir() or resolved.is_file()):
        raise GrantError(f"{resolved}: only regular files and directories can be granted")
    if not os.access(resolved, os.R_OK):
        raise GrantError(f"{resolved}: you cannot read it, so it cannot be granted")
    return GrantRequest(resolved, mode)


def grant_for(
    request: GrantRequest,
    *,
    lifetime: Lifetime,
    session: str | None = None,
    profile: str | None = None,
    expires_at: float | None = None,
    now: float | None = None,
) -> Grant:
    if lifetime in (Lifetime.ONCE, Lifetime.SESSION) and session is None:
        raise GrantError(f"a {lifetime} grant needs a session")
    if lifetime is Lifetime.ALWAYS and profile is None:
        raise GrantError("an 'always' grant needs a profile")
    if lifetime is Lifetime.UNTIL and expires_at is None:
        raise GrantError("an 'until' grant needs an expiry time")
    return Grant(
        id=new_grant_id(),
        path=request.path,
        mode=request.mode,
        lifetime=lifetime,
        session=session,
        profile=profile,
        created_at=time.time() if now is None else now,
        expires_at=expires_at,
    )


class Access(StrEnum):
    """What a network grant answers: whether the agent may connect to a host (one its
    profile lists as `ask`, or does not list at all), or upload to it past the threshold."""

    CONNECT = "connect"
    UPLOAD = "upload"


@dataclass(frozen=True, slots=True)
class NetworkGrant:
    """A remembered answer to a network or upload question, stored and revocable like a
    file grant. `allowed` False is a remembered refusal (the question is not asked again)."""

    id: str
    host: str  # a lower-case name or address, as the question named it
    port: int
    access: Access
    allowed: bool
    lifetime: Lifetime
    session: str | None
    profile: str | None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        return _in_force(self.revoked_at, self.expires_at, now)

    def applies(self, session: str, profile: str) -> bool:
        return self.session == session if self.session else self.profile == profile

    @property
    def subject(self) -> str:
        return f"{self.host}:{self.port}"

    # What lists of grants show in a file grant's path and mode columns.
    @property
    def path(self) -> str:
        return self.subject

    @property
    def mode(self) -> str:
        if not self.allowed:
            return f"{self.access}: refused"
        return str(self.access)


def new_network_grant_id() -> str:
    return "n-" + secrets.token_hex(4)


def network_grant_for(
    host: str,
    port: int,
    access: Access,
    *,
    allowed: bool,
    lifetime: Lifetime,
    session: str,
    profile: str,
    expires_at: float | None = None,
    now: float | None = None,
) -> NetworkGrant | None:
    """The grant an answer with `lifetime` makes, as file grants do: `always` is the
    profile's, anything shorter the session's; None for `once`, which is no grant."""
    if lifetime is Lifetime.ONCE:
        return None
    if lifetime is Lifetime.UNTIL and expires_at is None:
        raise GrantError("an 'until' grant needs an expiry time")
    always = lifetime is Lifetime.ALWAYS
    return NetworkGrant(
        id=new_network_grant_id(),
        host=host.lower().rstrip("."),
        port=port,
        access=access,
        allowed=allowed,
        lifetime=lifetime,
        session=None if always else session,
        profile=profile if always else None,
        created_at=time.time() if now is None else now,
        expires_at=None if always else expires_at,
    )


AnyGrant = Grant | NetworkGrant


def _in_force(revoked_at: float | None, expires_at: float | None, now: float) -> bool:
    """Whether a grant (of files or of a host) holds at `now`: not revoked, not expired."""
    return revoked_at is None and (expires_at is None or now < expires_at)
