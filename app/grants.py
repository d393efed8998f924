"""Grants: which session or profile may read (or write) which path, and for how long."""

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
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

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
