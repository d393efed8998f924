"""Route credentials in the user's keyring (the Secret Service on desktops).

Entries live under service "airlock", username = the route's secret name. The keyring API
cannot enumerate entries, so the *names* (never the values) are also kept in a small index
file for `airlock secret list`. Only a backend `secret_service.choose` accepts is used: never
a plaintext file or a backend that fails every call. All calls block on D-Bus: from the loop,
use a thread.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import keyring
import keyring.backend
import keyring.errors

from app.egress.secret_service import choose
from app.errors import EgressError
from app.profiles import NAME_PATTERN

log = logging.getLogger(__name__)

SERVICE = "airlock"
MAX_SECRET = 16 * 1024


class SecretSource(Protocol):
    """Where the proxy gets a route's credential from."""

    def get(self, name: str) -> str | None: ...


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise EgressError(f"{name!r} is not a secret name (lower-case letters, digits, . _ -)")
    return name


def check_value(value: str) -> str:
    if not value:
        raise EgressError("the secret is empty")
    if len(value) > MAX_SECRET:
        raise EgressError(f"the secret is longer than {MAX_SECRET} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        # It goes into an HTTP header: a newline would let it add headers of its own.
        raise EgressError("the secret contains control characters (a stray newline?)")
    if value != value.strip():
        # Not a valid header value either: the HTTP library would refuse it, quoting it.
        raise EgressError("the secret starts or ends with a space (a stray one, pasted?)")
    if any(ord(c) > 255 for c in value):
        raise EgressError("the secret has characters an HTTP header cannot carry (not Latin-1)")
    return value


class KeyringSecrets:
    """The keyring, plus the index of names Airlock stored there."""

    def __init__(self, index: Path, backend: keyring.backend.KeyringBackend | None = None) -> None:
        self.index = index
        # None: the keyring library's choice at each call (what the user configured).
        self.backend = backend

    def store(self) -> keyring.backend.KeyringBackend:
        usable, why = choose(self.backend or keyring.get_keyring())
        if usable is None:
            raise EgressError(f"cannot use the keyring: {why} (`airlock doctor` says what to do)")
        return usable

    def get(self, name: str) -> str | None:
        try:
            return self.store().get_password(SERVICE, check_name(name))
        except keyring.errors.KeyringError as e:
            raise EgressError(f"cannot read secret {name!r} from the keyring: {e}") from e

    def set(self, name: str, value: str) -> None:
        check_name(name)
        try:
            self.store().set_password(SERVICE, name, check_value(value))
        except keyring.errors.KeyringError as e:
            raise EgressError(f"cannot store secret {name!r} in the keyring: {e}") from e
        self._write_index(set(self.names()) | {name})

    def delete(self, name: str) -> None:
        check_name(name)
        backend = self.store()
        try:
            backend.delete_password(SERVICE, name)
        except keyring.errors.PasswordDeleteError as e:
            raise EgressError(f"no secret named {name!r} in the keyring") from e
        except keyring.errors.KeyringError as e:
            raise EgressError(f"cannot delete secret {name!r}: {e}") from e
        finally:
            self._write_index(set(self.names()) - {name})

    def names(self) -> list[str]:
        try:
            lines = self.index.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise EgressError(f"cannot read {self.index}: {e.strerror}") from e
        return sorted({line for line in lines if re.fullmatch(NAME_PATTERN, line)})

    def _write_index(self, names: Iterable[str]) -> None:
        self.index.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.index.with_suffix(".tmp")
        temporary.write_text("".join(f"{name}\n" for name in sorted(set(names))))
        os.replace(temporary, self.index)
