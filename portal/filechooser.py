"""The FileChooser portal (org.freedesktop.portal.FileChooser, version 4) on a session's bus:
each call is checked at the edge, becomes a consent request, and ends in a Response.

The agent is untrusted: every argument is validated into frozen dataclasses before anything
else happens, and whatever goes wrong afterwards is a D-Bus error reply or a Response of 1 or
2 — never a traceback to the caller, never a granted file without the user's (or a rule's)
yes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from app.consent import (
    Answer,
    ConsentBroker,
    ConsentRequest,
    RequestKind,
    new_request_id,
)
from app.delivery import FileDelivery
from app.errors import AirlockError, GrantError
from app.grants import Mode
from app.text import UNSAFE, escaped, printable
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusDict, DBusObjectPath, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

log = logging.getLogger(__name__)

PORTAL_PATH = "/org/freedesktop/portal/desktop"
REQUEST_PREFIX = "/org/freedesktop/portal/desktop/request"
FILE_CHOOSER = "org.freedesktop.portal.FileChooser"
REQUEST = "org.freedesktop.portal.Request"
VERSION = 4

# Error names clients of xdg-desktop-portal already know.
INVALID_ARGUMENT = "org.freedesktop.portal.Error.InvalidArgument"
FAILED = "org.freedesktop.portal.Error.Failed"
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

TOKEN = re.compile(r"[A-Za-z0-9_]+")

# A method that returns nothing: its D-Bus signature is empty.
NoReply = Annotated[None, DBusSignature("")]


class Method(StrEnum):
    OPEN = "OpenFile"
    SAVE = "SaveFile"
    SAVE_MANY = "SaveFiles"


class Response(IntEnum):
    """The Request interface's answer codes."""

    SUCCESS = 0
    CANCELLED = 1  # the user (or a rule, a timeout, a vanished front end) said no
    OTHER = 2  # ended some other way: the grant failed, the session is ending


class InvalidArgument(ValueError):
    """An argument of a portal call is malformed; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class ChooserLimits:
    """Bounds on what one agent may ask: every list and string from the caller is capped."""

    max_outstanding: int = 8  # requests of one session waiting for an answer
    max_options: int = 32
    max_text: int = 512  # characters of a title, label or filter name
    max_parent_window: int = 256
    max_token: int = 64
    max_filters: int = 64
    max_patterns: int = 64
    max_choices: int = 32
    max_choice_options: int = 64
    max_files: int = 256
    max_path_bytes: int = 4096
    max_name_bytes: int = 255
    answer_timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class FileFilter:
    name: str
    patterns: tuple[tuple[int, str], ...]  # (0, glob) or (1, MIME type)

    def to_dbus(self) -> list[Any]:
        return [self.name, [[kind, pattern] for kind, pattern in self.patterns]]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": shown(self.name),
            "patterns": [["glob" if k == 0 else "mime", shown(p)] for k, p in self.patterns],
        }


@dataclass(frozen=True, slots=True)
class Choice:
    id: str
    label: str
    options: tuple[tuple[str, str], ...]  # empty: a boolean choice, "true" or "false"
    initial: str

    @property
    def selected(self) -> str:
        """What the portal answers: the initial selection, else the first option (or false);
        Airlock's front ends do not offer the agent's combo boxes to the user."""
        if self.initial:
            return self.initial
        return self.options[0][0] if self.options else "false"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": shown(self.id),
            "label": shown(self.label),
            "initial": shown(self.initial),
            "options": [[shown(i), shown(label)] for i, label in self.options],
        }


@dataclass(frozen=True, slots=True)
class ChooserCall:
    """One FileChooser call, validated."""

    method: Method
    parent_window: str
    title: str
    token: str | None = None
    accept_label: str = ""
    modal: bool = True
    multiple: bool = False
    directory: bool = False
    filters: tuple[FileFilter, ...] = ()
    current_filter: FileFilter | None = None
    choices: tuple[Choice, ...] = ()
    current_folder: PurePosixPath | None = None
    current_name: str | None = None
    current_file: PurePosixPath | None = None
    files: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        """What is asked, in Airlock's words (the agent's own words go in the reason)."""
        if self.method is Method.OPEN:
            noun = "folder" if self.directory else "file"
            return f"open {noun}s" if self.multiple else f"open a {noun}"
        if self.method is Method.SAVE:
            return "save a file"
        return f"save {len(self.files)} file{'s' if len(self.files) != 1 else ''}"

    def details(self, image: str) -> dict[str, Any]:
        """JSON-ready, with every string of the agent's made safe to show."""
        return {
            "method": str(self.method),
            "image": image,
            "mode": str(Mode.READ if self.method is Method.OPEN else Mode.READ_WRITE),
            "title": shown(self.title),
            "accept_label": shown(self.accept_label),
            "modal": self.modal,
            "multiple": self.multiple,
            "directory": self.directory,
            "filters": [f.to_json() for f in self.filters],
            "current_filter": self.current_filter.to_json() if self.current_filter else None,
            "choices": [c.to_json() for c in self.choices],
            "current_folder": shown(str(self.current_folder)) if self.current_folder else None,
            "current_name": shown(self.current_name) if self.current_name else None,
            "current_file": shown(str(self.current_file)) if self.current_file else None,
            "files": [shown(name) for name in self.files],
        }

    def results(self, container_paths: Sequence[PurePosixPath]) -> dict[str, Variant]:
        results = {"uris": Variant("as", [file_uri(p) for p in container_paths])}
        if self.choices:
            results["choices"] = Variant("a(ss)", [[c.id, c.selected] for c in self.choices])
        chosen = self.current_filter or (self.filters[0] if self.filters else None)
        if chosen is not None and self.method is not Method.SAVE_MANY:
            results["current_filter"] = Variant("(sa(us))", chosen.to_dbus())
        return results


@dataclass(frozen=True, slots=True)
class AgentSession:
    """Who asks: shown with every request."""

    session: str
    profile: str
    image: str


# Untrusted text made safe to display, the same way the core shows an agent's reason.
shown = printable


def file_uri(path: PurePosixPath) -> str:
    return "file://" + quote(str(path), safe="/")


def request_path(sender: str, token: str) -> str:
    """/org/freedesktop/portal/desktop/request/SENDER/TOKEN, SENDER being the caller's unique
    name without ':' and with '.' as '_' (any other character an object path cannot hold
    becomes '_' as well)."""
    element = re.sub(r"[^A-Za-z0-9_]", "_", sender.removeprefix(":").replace(".", "_"))
    return f"{REQUEST_PREFIX}/{element or '_'}/{token}"


# validation at the edge

_OPTIONS: dict[Method, dict[str, str]] = {
    Method.OPEN: {
        "handle_token": "s",
        "accept_label": "s",
        "modal": "b",
        "multiple": "b",
        "directory": "b",
        "filters": "a(sa(us))",
        "current_filter": "(sa(us))",
        "choices": "a(ssa(ss)s)",
        "current_folder": "ay",
    },
    Method.SAVE: {
        "handle_token": "s",
        "accept_label": "s",
        "modal": "b",
        "filters": "a(sa(us))",
        "current_filter": "(sa(us))",
        "choices": "a(ssa(ss)s)",
        "current_name": "s",
        "current_folder": "ay",
        "current_file": "ay",
    },
    Method.SAVE_MANY: {
        "handle_token": "s",
        "accept_label": "s",
        "modal": "b",
        "choices": "a(ssa(ss)s)",
        "current_folder": "ay",
        "files": "aay",
    },
}


def parse_call(
    method: Method,
    parent_window: str,
    title: str,
    options: Mapping[str, Variant],
    limits: ChooserLimits = ChooserLimits(),
) -> ChooserCall:
    """Checks every argument of a call; raises InvalidArgument naming the first bad one.
    Options of other methods and unknown keys are ignored, as xdg-desktop-portal does."""
    _text("parent_window", parent_window, limits.max_parent_window)
    _text("title", title, limits.max_text)
    if len(options) > limits.max_options:
        raise InvalidArgument(f"options: {len(options)} entries, at most {limits.max_options}")
    known = _OPTIONS[method]
    values: dict[str, Any] = {}
    for key, variant in options.items():
        expected = known.get(key)
        if expected is None:
            continue
        if variant.signature != expected:
            raise InvalidArgument(
                f"option {key!r} must be of type {expected}, not {variant.signature}"
            )
        values[key] = variant.value
    call = ChooserCall(method, parent_window, title)
    changes: dict[str, Any] = {}
    if "handle_token" in values:
        changes["token"] = _token(values["handle_token"], limits)
    if "accept_label" in values:
        changes["accept_label"] = _text("accept_label", values["accept_label"], limits.max_text)
    for flag in ("modal", "multiple", "directory"):
        if flag in values:
            changes[flag] = bool(values[flag])
    if "filters" in values:
        raw = values["filters"]
        if len(raw) > limits.max_filters:
            raise InvalidArgument(f"filters: {len(raw)} filters, at most {limits.max_filters}")
        changes["filters"] = tuple(_filter(f"filters[{i}]", f, limits) for i, f in enumerate(raw))
    if "current_filter" in values:
        changes["current_filter"] = _filter("current_filter", values["current_filter"], limits)
    if "choices" in values:
        changes["choices"] = _choices(values["choices"], limits)
    if "current_folder" in values:
        changes["current_folder"] = _absolute("current_folder", values["current_folder"], limits)
    if "current_file" in values:
        changes["current_file"] = _absolute("current_file", values["current_file"], limits)
    if "current_name" in values:
        changes["current_name"] = _name("current_name", values["current_name"], limits)
    if "files" in values:
        raw = values["files"]
        if len(raw) > limits.max_files:
            raise InvalidArgument(f"files: {len(raw)} names, at most {limits.max_files}")
        names = tuple(
            _name(f"files[{i}]", _path_text(f"files[{i}]", b, limits), limits)
            for i, b in enumerate(raw)
        )
        if len(set(names)) != len(names):
            raise InvalidArgument("files: a name appears twice")
        changes["files"] = names
    if method is Method.SAVE_MANY and not changes.get("files"):
        raise InvalidArgument("files: SaveFiles needs at least one file name")
    return replace(call, **changes)


def _text(what: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{what}: {len(value)} characters, at most {limit}")
    return value


def _token(value: str, limits: ChooserLimits) -> str:
    if len(value) > limits.max_token or not TOKEN.fullmatch(value):
        raise InvalidArgument(f"handle_token: must be 1 to {limits.max_token} of A-Z a-z 0-9 _")
    return value


def _filter(what: str, raw: Sequence[Any], limits: ChooserLimits) -> FileFilter:
    name, patterns = raw
    _text(f"{what} name", name, limits.max_text)
    if not name:
        raise InvalidArgument(f"{what}: the name is empty")
    if len(patterns) > limits.max_patterns:
        raise InvalidArgument(f"{what}: {len(patterns)} patterns, at most {limits.max_patterns}")
    checked = []
    for j, (kind, pattern) in enumerate(patterns):
        if kind not in (0, 1):
            raise InvalidArgument(f"{what} pattern {j}: kind {kind}, must be 0 (glob) or 1 (MIME)")
        if not pattern:
            raise InvalidArgument(f"{what} pattern {j}: empty")
        checked.append((int(kind), _text(f"{what} pattern {j}", pattern, limits.max_text)))
    return FileFilter(name, tuple(checked))


def _choices(raw: Sequence[Any], limits: ChooserLimits) -> tuple[Choice, ...]:
    if len(raw) > limits.max_choices:
        raise InvalidArgument(f"choices: {len(raw)} choices, at most {limits.max_choices}")
    choices = []
    for i, (choice_id, label, options, initial) in enumerate(raw):
        what = f"choices[{i}]"
        if not choice_id or not label:
            raise InvalidArgument(f"{what}: the id and the label must not be empty")
        _text(f"{what} id", choice_id, limits.max_text)
        _text(f"{what} label", label, limits.max_text)
        if len(options) > limits.max_choice_options:
            raise InvalidArgument(
                f"{what}: {len(options)} options, at most {limits.max_choice_options}"
            )
        pairs = []
        for option_id, option_label in options:
            if not option_id or not option_label:
                raise InvalidArgument(f"{what}: an option's id or label is empty")
            pairs.append(
                (
                    _text(f"{what} option", option_id, limits.max_text),
                    _text(f"{what} option", option_label, limits.max_text),
                )
            )
        allowed = {p[0] for p in pairs} if pairs else {"true", "false"}
        if initial and initial not in allowed:
            raise InvalidArgument(
                f"{what}: the initial selection {shown(initial)!r} is none of its options"
            )
        choices.append(Choice(choice_id, label, tuple(pairs), initial))
    if len({c.id for c in choices}) != len(choices):
        raise InvalidArgument("choices: an id appears twice")
    return tuple(choices)


def _path_text(what: str, raw: bytes, limits: ChooserLimits) -> str:
    """An `ay` path: NUL-terminated bytes of the file system's encoding, which in the agent's
    container is UTF-8; other bytes are refused rather than guessed at."""
    data = bytes(raw)
    if data.endswith(b"\0"):
        data = data[:-1]
    if b"\0" in data:
        raise InvalidArgument(f"{what}: a NUL byte inside the path")
    if not data:
        raise InvalidArgument(f"{what}: empty")
    if len(data) > limits.max_path_bytes:
        raise InvalidArgument(f"{what}: {len(data)} bytes, at most {limits.max_path_bytes}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{what}: not UTF-8 (byte {e.start})") from e


def _absolute(what: str, raw: bytes, limits: ChooserLimits) -> PurePosixPath:
    text = _path_text(what, raw, limits)
    path = PurePosixPath(text)
    if not path.is_absolute():
        raise InvalidArgument(f"{what}: must be an absolute path")
    if ".." in path.parts:
        raise InvalidArgument(f"{what}: must not contain '..'")
    return path


def _name(what: str, name: str, limits: ChooserLimits) -> str:
    """A bare file name: what the agent suggests must not pick the folder."""
    if not name:
        raise InvalidArgument(f"{what}: empty")
    if "/" in name:
        raise InvalidArgument(f"{what}: a file name, not a path (no '/')")
    if name in (".", ".."):
        raise InvalidArgument(f"{what}: {name!r} is not a file name")
    unsafe = UNSAFE.search(name)
    if unsafe:
        # app/text.py's policy: a name that acts or hides (controls, C1, bidi marks,
        # zero-width and other invisible characters, odd blanks) is refused, not shown.
        raise InvalidArgument(
            f"{what}: a control or invisible character ({escaped(unsafe.group())}) in a file name"
        )
    if len(name.encode()) > limits.max_name_bytes:
        raise InvalidArgument(f"{what}: longer than {limits.max_name_bytes} bytes")
    return name


# the D-Bus objects


@dataclass(slots=True, eq=False)
class _Pending:
    """One outstanding request: its Request object, consent question and serving task."""

    call: ChooserCall
    sender: str
    path: str
    consent: ConsentRequest
    handle: RequestHandle
    task: asyncio.Task[None] | None = None
    closed: bool = False


class RequestHandle(ServiceInterface):
    """org.freedesktop.portal.Request at the call's handle: Close, and the Response signal."""

    def __init__(
        self, owner: str, caller: Callable[[], str | None], on_close: Callable[[], None]
    ) -> None:
        super().__init__(REQUEST)
        self.owner = owner
        self._caller = caller
        self._on_close = on_close

    @dbus_method()
    def Close(self) -> NoReply:
        if self._caller() != self.owner:
            raise DBusError(ACCESS_DENIED, "this request belongs to another connection")
        self._on_close()

    @dbus_signal()
    def Response(
        self, response: int, results: dict[str, Variant]
    ) -> Annotated[list[Any], DBusSignature("ua{sv}")]:
        return [response, results]


class FileChooserPortal(ServiceInterface):
    """The portal of one session. Attach it to the supervisor's connection to the session's
    private bus; `close` withdraws every outstanding request."""

    def __init__(
        self,
        who: AgentSession,
        broker: ConsentBroker,
        delivery: FileDelivery,
        limits: ChooserLimits = ChooserLimits(),
    ) -> None:
        super().__init__(FILE_CHOOSER)
        self.who = who
        self._broker = broker
        self._delivery = delivery
        self._limits = limits
        self._bus: MessageBus | None = None
        self._caller: str | None = None
        self._pending: dict[str, _Pending] = {}
        self._tokens = itertools.count(1)

    # wiring

    def attach(self, bus: MessageBus) -> None:
        self._bus = bus
        bus.add_message_handler(self._note_caller)
        bus.export(PORTAL_PATH, self)

    async def close(self) -> None:
        pending = list(self._pending.values())
        for request in pending:
            self._withdraw(request)
        tasks = [r.task for r in pending if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._bus is not None:
            self._bus.unexport(PORTAL_PATH, self)
            self._bus.remove_message_handler(self._note_caller)
            self._bus = None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def _note_caller(self, message: Message) -> None:
        """dbus-fast gives a service method its arguments but not the caller's unique name,
        which the handle's path and Close's owner check need. User handlers run just before
        dispatch of the same message, and the methods here are synchronous, so the name
        noted here is the one of the call being served."""
        if message.message_type is MessageType.METHOD_CALL:
            self._caller = message.sender

    # the interface

    @dbus_property(access=PropertyAccess.READ)
    def version(self) -> DBusUInt32:
        return VERSION

    @dbus_method()
    def OpenFile(self, parent_window: DBusStr, title: DBusStr, options: DBusDict) -> DBusObjectPath:
        return self._begin(Method.OPEN, parent_window, title, options)

    @dbus_method()
    def SaveFile(self, parent_window: DBusStr, title: DBusStr, options: DBusDict) -> DBusObjectPath:
        return self._begin(Method.SAVE, parent_window, title, options)

    @dbus_method()
    def SaveFiles(
        self, parent_window: DBusStr, title: DBusStr, options: DBusDict
    ) -> DBusObjectPath:
        return self._begin(Method.SAVE_MANY, parent_window, title, options)

    # a request's life

    def _begin(
        self, method: Method, parent_window: str, title: str, options: dict[str, Variant]
    ) -> str:
        sender, bus = self._caller, self._bus
        if not sender or bus is None:
            raise DBusError(FAILED, "the portal cannot tell who is calling")
        try:
            call = parse_call(method, parent_window, title, options, self._limits)
        except InvalidArgument as e:
            log.info("session %s: refused %s: %s", self.who.session, method, e)
            raise DBusError(INVALID_ARGUMENT, f"{method}: {e}") from e
        except (TypeError, ValueError) as e:
            # A struct of the right signature always unpacks; this is a guard, not a path.
            raise DBusError(INVALID_ARGUMENT, f"{method}: malformed options") from e
        if len(self._pending) >= self._limits.max_outstanding:
            raise DBusError(
                LIMITS_EXCEEDED,
                f"{method}: {len(self._pending)} requests are "
                "already waiting for an answer; close one or wait",
            )
        token = call.token or f"airlock{next(self._tokens)}"
        path = request_path(sender, token)
        if path in self._pending:
            raise DBusError(
                INVALID_ARGUMENT,
                f"{method}: handle_token {token!r} is in use by an outstanding request",
            )
        consent = ConsentRequest(
            id=new_request_id(),
            session=self.who.session,
            profile=self.who.profile,
            kind=RequestKind.FILE_OPEN if method is Method.OPEN else RequestKind.FILE_SAVE,
            subject=call.subject,
            details=call.details(self.who.image),
            reason=call.title,
            timeout=self._limits.answer_timeout,
        )
        handle = RequestHandle(sender, self._caller_now, functools.partial(self._close, path))
        request = _Pending(call, sender, path, consent, handle)
        # Exported before the handle is returned, so a Close right after the reply finds it.
        bus.export(path, request.handle)
        self._pending[path] = request
        request.task = asyncio.get_running_loop().create_task(self._serve(request))
        return path

    def _caller_now(self) -> str | None:
        return self._caller

    async def _serve(self, request: _Pending) -> None:
        code, results = Response.OTHER, {}
        try:
            if request.closed:
                return
            answer = await self._broker.ask(request.consent)
            if request.closed:
                return  # the agent closed it: no Response, and nothing is delivered
            if answer.allowed:
                results = await self._deliver(request.call, answer)
                code = Response.SUCCESS
            else:
                code = Response.CANCELLED
        except AirlockError as e:  # refused by the core: a GrantError, a session ending
            log.warning(
                "session %s: %s allowed but not delivered: %s",
                self.who.session,
                request.call.method,
                e,
            )
        except asyncio.CancelledError:
            self._withdraw(request)
            raise
        except Exception:
            log.exception("session %s: serving %s failed", self.who.session, request.path)
        if not request.closed:
            self._respond(request, code, results)

    async def _deliver(self, call: ChooserCall, answer: Answer) -> dict[str, Variant]:
        paths = list(answer.paths)
        if not paths:
            raise GrantError("the front end allowed the request but picked nothing")
        session = self.who.session
        if call.method is Method.OPEN:
            if len(paths) > 1 and not call.multiple:
                raise GrantError(f"{len(paths)} files picked for a single-file request")
            inside = await self._delivery.open_files(
                session, paths, answer.mode, answer.lifetime, answer.until
            )
        elif call.method is Method.SAVE:
            if len(paths) != 1:
                raise GrantError(f"{len(paths)} targets picked for one file to save")
            inside = await self._delivery.save_files(session, paths, answer.lifetime)
        else:
            targets = _targets(call, paths)
            inside = await self._delivery.save_files(session, targets, answer.lifetime)
        return call.results(inside)

    def _respond(self, request: _Pending, code: Response, results: dict[str, Variant]) -> None:
        # A broadcast on the session's own bus, where only the agent's processes listen:
        # it lets a one-shot caller (`gdbus call`) hand the wait to another process.
        request.handle.Response(int(code), results)
        self._withdraw(request)

    def _close(self, path: str) -> None:
        """Close() from the caller: the question is withdrawn and no Response follows. A
        request not yet in front of a front end is stopped by `closed` before it gets there."""
        request = self._pending.get(path)
        if request is None:
            return
        request.closed = True
        self._broker.cancel(request.consent.id)
        self._withdraw(request)

    def _withdraw(self, request: _Pending) -> None:
        request.closed = True
        if self._pending.pop(request.path, None) is not None and self._bus is not None:
            self._bus.unexport(request.path, request.handle)


def _targets(call: ChooserCall, picked: Sequence[Path]) -> list[Path]:
    """SaveFiles: the user picks a folder (the agent's names go into it) or one target per
    name."""
    if len(picked) == 1 and picked[0].is_dir():
        return [picked[0] / name for name in call.files]
    if len(picked) == len(call.files):
        return list(picked)
    raise GrantError(f"{len(picked)} targets picked for {len(call.files)} files to save")
