"""Whether the keyring can hold Airlock's credentials on this login, why not, and what to do.

The keyring library picks a backend by itself and, with no Secret Service around, falls back
to one that fails every call (or, with keyrings.alt installed, to a plaintext file). Airlock
keeps route credentials only in backends that encrypt them and that the desktop unlocks
(`SAFE_BACKENDS`), and says exactly what is missing otherwise. On a text or SSH login it can
start gnome-keyring on the login's session bus and unlock (or create) the login keyring with
a password read from the terminal.

The facts are gathered by blocking probes (`find_session_bus`, `probe_keyring`) bounded in
time; `keyring_problem` turns them into a message and a fix, shared by `airlock secret` and
`airlock doctor`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import SecretService as SecretServiceBackend
from keyring.backends.chainer import ChainerBackend

from app.errors import EgressError

# Backends that keep secrets encrypted in a service the desktop unlocks. Everything else
# (keyring's fail and null backends, keyrings.alt's plaintext and "encrypted" files, a chainer
# that would fall through to one of those) is refused: a credential must never land in a
# file by accident.
SAFE_BACKENDS = frozenset(
    {
        "keyring.backends.SecretService.Keyring",
        "keyring.backends.libsecret.Keyring",
        "keyring.backends.kwallet.DBusKeyring",
        "keyring.backends.kwallet.DBusKeyringKWallet4",
        "keyring.backends.macOS.Keyring",
        "keyring.backends.Windows.WinVaultKeyring",
    }
)
SECRET_SERVICE_BACKEND = "keyring.backends.SecretService.Keyring"
PROBE_SECONDS = 5.0
UNLOCK_SECONDS = 30.0

T = TypeVar("T")


class Collection(Enum):
    """The state of the Secret Service's default collection (the login keyring)."""

    UNLOCKED = "unlocked"
    LOCKED = "locked"
    MISSING = "missing"  # no login keyring yet: creating one asks for a password
    UNKNOWN = "unknown"  # not asked: the backend is not the Secret Service


@dataclass(frozen=True, slots=True)
class BusFacts:
    """The login's D-Bus session bus: the address the environment names, else the login's
    own socket ($XDG_RUNTIME_DIR/bus, /run/user/UID/bus) if one exists."""

    variable: str  # DBUS_SESSION_BUS_ADDRESS as found ("" if unset)
    login_socket: str  # the login's bus socket, "" if none
    reachable: bool  # a connection to the address was accepted
    error: str = ""  # why not

    @property
    def address(self) -> str:
        if self.variable:
            return self.variable
        return f"unix:path={self.login_socket}" if self.login_socket else ""


@dataclass(frozen=True, slots=True)
class KeyringFacts:
    bus: BusFacts
    backend: str  # the keyring library's choice, module.Class
    refusal: str  # why Airlock will not use that backend ("" if it will)
    service: str  # why the Secret Service is not available ("" if it is, or not asked)
    collection: Collection
    keyring_daemon: bool  # gnome-keyring-daemon is installed
    display: bool  # a graphical session: its unlock prompt can be answered

    @property
    def ready(self) -> bool:
        """The keyring can be used as it is (a desktop asks for a locked keyring's password
        itself)."""
        if self.refusal:
            return False
        return self.collection in (Collection.UNLOCKED, Collection.UNKNOWN) or self.display

    @property
    def startable(self) -> bool:
        """gnome-keyring, started (or restarted) by Airlock with a password typed here,
        would make the keyring usable."""
        if not self.bus.reachable or not self.keyring_daemon or self.display:
            return False
        if self.collection in (Collection.LOCKED, Collection.MISSING):
            return True
        return bool(self.service) and self.backend in (SECRET_SERVICE_BACKEND, _FAIL_BACKEND)


_FAIL_BACKEND = "keyring.backends.fail.Keyring"


@dataclass(frozen=True, slots=True)
class Advice:
    problem: str
    fix: str


def backend_name(backend: keyring.backend.KeyringBackend) -> str:
    kind = type(backend)
    return f"{kind.__module__}.{kind.__qualname__}"


def choose(
    backend: keyring.backend.KeyringBackend,
) -> tuple[keyring.backend.KeyringBackend | None, str]:
    """The backend Airlock keeps credentials in, given the keyring library's choice, or None
    and why not. A chainer stores in its first backend: that one is used if it is safe
    (a plaintext file further down the chain, from keyrings.alt, is never reached)."""
    name = backend_name(backend)
    if isinstance(backend, ChainerBackend):
        members = list(backend.backends)
        if members and backend_name(members[0]) in SAFE_BACKENDS:
            return members[0], ""
        names = ", ".join(backend_name(m) for m in members) or "nothing"
        return None, (
            f"the keyring library would chain to {names}, which Airlock does not "
            "trust with credentials"
        )
    if name in SAFE_BACKENDS:
        return backend, ""
    if name == _FAIL_BACKEND:
        return None, "no keyring backend works here"
    if name == "keyring.backends.null.Keyring":
        return None, "the keyring is turned off (the null backend)"
    return None, (
        f"the keyring backend {name} is not one Airlock trusts with credentials "
        "(it keeps them only in the Secret Service, KWallet, or the macOS and "
        "Windows stores)"
    )


def keyring_problem(facts: KeyringFacts, command: str = "airlock secret set NAME") -> Advice:
    """What is wrong with the keyring, and what to do; `ready` facts need no advice."""
    bus = facts.bus
    if not bus.address and not facts.display:
        return Advice(
            "no D-Bus session bus on this login (DBUS_SESSION_BUS_ADDRESS is unset and there "
            f"is no /run/user/{os.getuid()}/bus), so there is no Secret Service to keep "
            "credentials in",
            "install dbus-user-session (sudo apt-get install dbus-user-session) and log in "
            "again: every login, SSH too, then has a session bus; or, for this login only, "
            "start a shell on a bus of its own, `dbus-run-session -- $SHELL`, and run "
            f"`{command}` and later `airlock run` or `airlock daemon` in that shell (the bus "
            "and the keyring on it end with that shell: `dbus-run-session -- "
            f"{command}` alone stores the key, but an `airlock run` outside it cannot read it)",
        )
    if not bus.address:
        return Advice(
            "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset)",
            "run Airlock from your desktop session's terminal, or set "
            "DBUS_SESSION_BUS_ADDRESS to your session's bus",
        )
    if not bus.reachable:
        return Advice(
            f"the session bus {bus.address} does not answer ({bus.error})",
            "unset DBUS_SESSION_BUS_ADDRESS if it is stale (a bus of an earlier "
            "login), or start a new one: `dbus-run-session -- $SHELL`",
        )
    if facts.collection is Collection.LOCKED:
        return Advice(
            "the login keyring is locked and nothing on this login can ask for its password"
            if not facts.display
            else "the login keyring is locked",
            _unlock_fix(facts, command, "unlock it"),
        )
    if facts.collection is Collection.MISSING:
        return Advice(
            "the Secret Service has no login keyring yet", _unlock_fix(facts, command, "create it")
        )
    if facts.service and facts.backend in (SECRET_SERVICE_BACKEND, _FAIL_BACKEND):
        return Advice(
            f"no Secret Service on the session bus ({facts.service})",
            _unlock_fix(facts, command, "start one"),
        )
    if facts.refusal:
        return Advice(
            facts.refusal,
            "remove keyrings.alt or the PYTHON_KEYRING_BACKEND / keyringrc.cfg "
            "setting that chose it, so that the Secret Service (gnome-keyring, "
            "KeePassXC) or KWallet is used",
        )
    return Advice("", "")


def _unlock_fix(facts: KeyringFacts, command: str, what: str) -> str:
    if not facts.keyring_daemon:
        return (
            "install gnome-keyring (sudo apt-get install gnome-keyring), or run another "
            "Secret Service (KeePassXC's, KWallet's) on the session bus"
        )
    if facts.display:
        return f"{what} from your desktop (Passwords and Keys / seahorse), then run `{command}`"
    return (
        f"`{command}` starts gnome-keyring on this login's bus and asks for the keyring's "
        f"password on the terminal to {what}"
    )


# -- probes (blocking, bounded in time) ----------------------------------------------------


def find_session_bus(environ: Mapping[str, str], uid: int) -> BusFacts:
    variable = environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    login_socket = ""
    candidates = (
        [Path(environ["XDG_RUNTIME_DIR"]) / "bus"] if environ.get("XDG_RUNTIME_DIR") else []
    )
    candidates.append(Path(f"/run/user/{uid}/bus"))
    for candidate in candidates:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(candidate.stat().st_mode):
                login_socket = str(candidate)
                break
    address = variable or (f"unix:path={login_socket}" if login_socket else "")
    error = _connect_error(address) if address else "no address"
    return BusFacts(variable, login_socket, not error, error)


def _connect_error(address: str) -> str:
    """Whether something accepts connections at a D-Bus address ("" if it does). Only unix
    transports are tried; others are taken on trust."""
    for transport in address.split(";"):
        kind, _, rest = transport.partition(":")
        if kind != "unix":
            return ""
        params = dict(p.partition("=")[::2] for p in rest.split(",") if "=" in p)
        if "path" in params:
            target = params["path"]
        elif "abstract" in params:
            target = "\0" + params["abstract"]
        else:
            return ""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_SECONDS)
            try:
                sock.connect(target)
            except OSError as e:
                return e.strerror or str(e)
            return ""
    return "no usable transport"


def within(seconds: float, probe: Callable[[], T], what: str) -> T:
    """`probe()` in a daemon thread, given up on (TimeoutError) after `seconds`: a hung
    service must not hang the command."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(probe())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as is
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True, name=f"probe {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not answer within {seconds:.0f} s")
    if failure:
        raise failure[0]
    return outcome[0]


def probe_keyring(
    environ: Mapping[str, str], uid: int, backend: keyring.backend.KeyringBackend | None = None
) -> KeyringFacts:
    """The keyring as Airlock would use it on this login. Reads `environ` for the bus as it
    will be when the keyring is used (see `use_login_bus`)."""
    bus = find_session_bus(environ, uid)
    display = bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
    daemon = shutil.which("gnome-keyring-daemon") is not None
    try:
        chosen = backend or within(PROBE_SECONDS, keyring.get_keyring, "the keyring library")
    except TimeoutError as e:
        return KeyringFacts(bus, "", str(e), str(e), Collection.UNKNOWN, daemon, display)
    usable, refused = choose(chosen)
    name = backend_name(usable or chosen)
    service, collection = "", Collection.UNKNOWN
    if name in (SECRET_SERVICE_BACKEND, _FAIL_BACKEND):
        if bus.reachable:
            try:
                service, collection = within(
                    PROBE_SECONDS, _secret_service_state, "the Secret Service"
                )
            except TimeoutError as e:
                service = str(e)
        else:
            service = "no session bus"
    return KeyringFacts(bus, name, refused, service, collection, daemon, display)


def _secret_service_state() -> tuple[str, Collection]:
    try:
        import secretstorage
        import secretstorage.exceptions
    except ImportError:
        return "the SecretStorage package is missing", Collection.UNKNOWN
    try:
        with contextlib.closing(secretstorage.dbus_init()) as connection:
            if not secretstorage.check_service_availability(connection):
                return "neither running nor installed for D-Bus activation", Collection.UNKNOWN
            try:
                # Reading the default collection activates the service, but never prompts.
                default = secretstorage.Collection(connection)
            except secretstorage.exceptions.ItemNotFoundException:
                return "", Collection.MISSING
            return "", Collection.LOCKED if default.is_locked() else Collection.UNLOCKED
    except secretstorage.exceptions.SecretStorageException as e:
        return str(e) or type(e).__name__, Collection.UNKNOWN


def use_login_bus(environ: MutableMapping[str, str], uid: int) -> str:
    """Sets DBUS_SESSION_BUS_ADDRESS to the login's own bus when it is unset and one exists
    (an SSH login under systemd has one, without the variable); the address, or ""."""
    bus = find_session_bus(environ, uid)
    if not bus.variable and bus.login_socket:
        environ["DBUS_SESSION_BUS_ADDRESS"] = bus.address
    return bus.address


def start_gnome_keyring(password: str, environ: Mapping[str, str], *, replace: bool) -> None:
    """Starts gnome-keyring's Secret Service on the session bus and unlocks the login keyring
    with `password` (creating it if there is none). `replace`: a daemon that holds a locked
    keyring (started by D-Bus activation, with nobody to ask for the password) is replaced."""
    command = [
        "gnome-keyring-daemon",
        *(["--replace"] if replace else []),
        "--unlock",
        "--components=secrets",
    ]
    try:
        # A session of its own: the daemon outlives this command and must not get the
        # terminal's hang-up when the command's session ends; it lives as long as the bus.
        done = subprocess.run(
            command,
            input=password.encode(),
            capture_output=True,
            env=dict(environ),
            timeout=UNLOCK_SECONDS,
            check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EgressError(f"cannot start gnome-keyring-daemon: {e}") from e
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise EgressError(
            "gnome-keyring-daemon failed: "
            f"{detail[-1] if detail else f'exit status {done.returncode}'}"
        )


def secret_service_backend() -> keyring.backend.KeyringBackend:
    """The Secret Service backend, chosen explicitly (the library's own choice was made
    before Airlock started gnome-keyring)."""
    backend: keyring.backend.KeyringBackend = SecretServiceBackend.Keyring()  # type: ignore[no-untyped-call]
    try:
        within(PROBE_SECONDS, lambda: SecretServiceBackend.Keyring.priority, "the Secret Service")
    except (RuntimeError, TimeoutError) as e:
        raise EgressError(f"the Secret Service is still not available: {e}") from e
    return backend
