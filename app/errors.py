"""Airlock's domain errors. Each message is one line a user can act on."""

from __future__ import annotations


class AirlockError(Exception):
    """Base of the errors the command line prints as one line (exit status `exit_code`)."""

    exit_code = 2


class ProfileError(AirlockError):
    """A profile file is missing, unreadable or invalid."""


class EngineError(AirlockError):
    """The container engine is unreachable or refused something."""

    exit_code = 3


class ImageError(AirlockError):
    """The agent image is missing, cannot be built, or does not match its pinned digest."""

    exit_code = 3


class GrantError(AirlockError):
    """A grant cannot be given as asked (missing path, unsupported mode, unknown grant)."""


class SessionError(AirlockError):
    """A session cannot be found, started or stopped."""


class SandboxRefused(SessionError):
    """The sandbox check found the running container other than asked for: the agent's
    command never ran."""


class EgressError(AirlockError):
    """The egress proxy, its bridge or the keyring cannot do what was asked."""
