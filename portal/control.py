"""Airlock's control interface on the user's session bus: the running desktop app owns
`org.airlock.Airlock` and answers a few typed calls (show, list, launch, stop, revoke).

Only the user's own session bus reaches it. Every argument is checked here, at the edge; a
refusal is a D-Bus error with one readable line, and nothing else (no traceback, no internal
detail) ever goes back to a caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Annotated, Any, Protocol

from app.errors import AirlockError
from app.grants import GrantRequest, Mode
from dbus_fast import BusType, Message, MessageType, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import NameFlag
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method

log = logging.getLogger(__name__)

NAME = "org.airlock.Airlock"
PATH = "/org/airlock/Airlock"
INTERFACE = "org.airlock.Airlock1"
INVALID = "org.airlock.Airlock.Error.InvalidArgument"
FAILED = "org.airlock.Airlock.Error.Failed"

SESSION_ID = re.compile(r"^[0-9a-f]{8}$")
PROFILE_REFERENCE = re.compile(r"^[A-Za-z0-9._-]{1,64}$|^/[^\x00-\x1f\x7f]{1,4095}$")
MAX_GRANTS = 64
MAX_PATH = 4096

NoReply = Annotated[None, DBusSignature("")]
SessionList = Annotated[list[list[str]], DBusSignature("a(sss)")]
StringList = Annotated[list[str], DBusSignature("as")]


class ControlTarget(Protocol):
    """What the control interface drives: the desktop app's controller."""

    def open_window(self) -> None: ...

    async def control_sessions(self) -> list[tuple[str, str, str]]: ...

    async def control_launch(self, profile: str, grants: list[GrantRequest]) -> str: ...

    async def control_stop(self, session: str) -> None: ...

    async def control_revoke(self, session: str) -> int: ...

    def control_pending(self) -> int: ...


def check_session(session: str) -> str:
    if not SESSION_ID.match(session):
        raise DBusError(INVALID, "a session id is 8 hex digits (see `airlock sessions`)")
    return session


def check_profile(profile: str) -> str:
    if not PROFILE_REFERENCE.match(profile):
        raise DBusError(INVALID, "a profile is a name (letters, digits, . _ -) or an absolute path")
    return profile


def check_grants(grants: list[str]) -> list[GrantRequest]:
    """`PATH`, `PATH:ro` or `PATH:rw`, absolute. Whether a path may be granted at all is the
    core's check, made when the session starts."""
    if len(grants) > MAX_GRANTS:
        raise DBusError(INVALID, f"at most {MAX_GRANTS} grants per launch")
    checked = []
    for text in grants:
        path, mode = text, Mode.READ
        for suffix, suffix_mode in ((":ro", Mode.READ), (":rw", Mode.READ_WRITE)):
            if text.endswith(suffix):
                path, mode = text[: -len(suffix)], suffix_mode
        if (
            not path.startswith("/")
            or len(path) > MAX_PATH
            or any(ord(c) < 32 or ord(c) == 127 for c in path)
        ):
            raise DBusError(
                INVALID,
                "grants are absolute paths, optionally ending in :ro "
                "or :rw, without control characters",
            )
        checked.append(GrantRequest(path=_path(path), mode=mode))
    return checked


def _path(text: str) -> Any:
    from pathlib import Path

    return Path(os.path.normpath(text))


class ControlInterface(ServiceInterface):
    def __init__(self, target: ControlTarget) -> None:
        super().__init__(INTERFACE)
        self._target = target

    @dbus_method()
    def Show(self) -> NoReply:
        self._target.open_window()

    @dbus_method()
    async def ListSessions(self) -> SessionList:
        return [list(row) for row in await self._target.control_sessions()]

    @dbus_method()
    def PendingRequests(self) -> DBusUInt32:
        return self._target.control_pending()

    @dbus_method()
    async def Launch(self, profile: DBusStr, grants: StringList) -> DBusStr:
        requests = check_grants(list(grants))
        with _refusals("launch"):
            return await self._target.control_launch(check_profile(profile), requests)
        raise AssertionError("unreachable")  # pragma: no cover (_refusals always raises)

    @dbus_method()
    async def Stop(self, session: DBusStr) -> NoReply:
        with _refusals("stop"):
            await self._target.control_stop(check_session(session))

    @dbus_method()
    async def Revoke(self, session: DBusStr) -> DBusUInt32:
        with _refusals("revoke"):
            return await self._target.control_revoke(check_session(session))
        raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _refusals(what: str) -> Any:
    """The core's refusals become one line for the caller; anything else is logged here and
    the caller learns only that it failed."""
    try:
        yield
    except DBusError:
        raise
    except AirlockError as e:
        raise DBusError(FAILED, str(e)) from e
    except Exception as e:
        log.exception("control: %s failed", what)
        raise DBusError(FAILED, f"{what} failed; see the desktop app's log") from e


class ControlService:
    """The app's connection to the session bus: claims the name, serves the interface, and
    (when another instance owns the name) asks that one to show itself."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address
        self._bus: MessageBus | None = None
        self._interface: ControlInterface | None = None

    @property
    def connected(self) -> bool:
        return self._bus is not None

    async def connect(self) -> bool:
        """False when there is no session bus (a plain ssh login, a container)."""
        if self._address is None and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return False
        try:
            if self._address is not None:
                bus = MessageBus(bus_address=self._address)
            else:
                bus = MessageBus(bus_type=BusType.SESSION)
            self._bus = await bus.connect()
        except (OSError, DBusError, ValueError) as e:
            log.warning("cannot connect to the session bus: %s", e)
            return False
        return True

    async def claim(self) -> bool:
        """Owns the name; False if another instance has it."""
        assert self._bus is not None
        reply = await self._bus.request_name(NAME, NameFlag.DO_NOT_QUEUE)
        return bool(reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER))

    def serve(self, target: ControlTarget) -> None:
        assert self._bus is not None
        self._interface = ControlInterface(target)
        self._bus.export(PATH, self._interface)

    async def call_show(self) -> None:
        assert self._bus is not None
        await self._bus.call(
            Message(destination=NAME, path=PATH, interface=INTERFACE, member="Show")
        )

    @property
    def bus(self) -> MessageBus | None:
        return self._bus

    def disconnect(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(EOFError, OSError):
                self._bus.disconnect()
            self._bus = None


async def call(
    bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None
) -> list[Any]:
    """A client call to the running app (for the command line and tests). Raises DBusError
    with the app's one-line refusal."""
    reply = await bus.call(
        Message(
            destination=NAME,
            path=PATH,
            interface=INTERFACE,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply is None:
        raise DBusError(FAILED, "no reply")
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name or FAILED, str(reply.body[0] if reply.body else ""))
    return list(reply.body)
