"""What an agent inside Airlock can ask of the user (more files, a place to save, a host)
and see of its session, shared by Airlock's MCP server (airlock_mcp.py) and the
`airlock-request` command (airlock_request.py) for agents without an MCP client. Each ask is
a request on the session's private bus, so the user sees the same consent dialog as for any
portal call; the answer comes back as text a model can act on.

It runs with the image's Python and the pinned packages beside it (/opt/airlock/mcp/lib),
and trusts nothing it is told: the reason the agent gives is shown to the user as the
agent's own, unverified words.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

PORTAL = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
CHOOSER = "org.freedesktop.portal.FileChooser"
NETWORK = "org.airlock.Network1"
SAVES = Path("/run/airlock/save")
# The supervisor answers "cancelled" itself when nobody decides (approval.timeout, 120 s by
# default); this only guards against a supervisor that is gone.
ANSWER_TIMEOUT = 15 * 60.0
MAX_SAVE = 8 * 1024 * 1024

INSTRUCTIONS = (
    "You run inside Airlock, a sandbox on the user's computer. You see only the files the "
    "user granted; your writes are staged for the user's review and reach their files only "
    "when they approve. Use request_files to ask for more files or folders (say why: the "
    "user reads your reason), save_file to hand the user a new file, status to see what "
    "you have. Network access is limited to the hosts of your profile; ask for another with "
    "request_host."
)
_tokens = itertools.count(1)
_pending: dict[str, str] = {}  # handle token -> what is being asked


class Portal:
    """One connection to the session's bus, made on first use."""

    def __init__(self) -> None:
        self.bus: MessageBus | None = None

    async def connect(self) -> MessageBus:
        if self.bus is None or not self.bus.connected:
            address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
            if not address:
                raise RuntimeError(
                    "this session has no Airlock bus (DBUS_SESSION_BUS_ADDRESS "
                    "is unset), so nothing can be asked of the user"
                )
            self.bus = await MessageBus(bus_address=address).connect()
        return self.bus

    async def ask(
        self, method: str, title: str, options: dict[str, Variant]
    ) -> tuple[int, dict[str, Any]]:
        """Call a FileChooser method and wait for its Response: (code, results)."""
        bus = await self.connect()
        token = f"airlockmcp{os.getpid()}_{next(_tokens)}"
        sender = (bus.unique_name or "").lstrip(":").replace(".", "_")
        handle = f"{PORTAL_PATH}/request/{sender}/{token}"
        answered: asyncio.Future[tuple[int, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )

        def on_message(message: Message) -> None:
            if (
                message.message_type is MessageType.SIGNAL
                and message.path == handle
                and message.member == "Response"
                and not answered.done()
            ):
                code, results = message.body
                answered.set_result((int(code), {k: v.value for k, v in results.items()}))

        bus.add_message_handler(on_message)
        try:
            rule = (
                f"type='signal',interface='org.freedesktop.portal.Request',"
                f"member='Response',path='{handle}'"
            )
            await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
            reply = await bus.call(
                Message(
                    destination=PORTAL,
                    path=PORTAL_PATH,
                    interface=CHOOSER,
                    member=method,
                    signature="ssa{sv}",
                    body=["", title, {"handle_token": Variant("s", token), **options}],
                )
            )
            if reply is None or reply.message_type is MessageType.ERROR:
                detail = reply.body[0] if reply is not None and reply.body else "no reply"
                raise RuntimeError(f"Airlock refused the request: {detail}")
            _pending[token] = f"{method}: {title}"
            try:
                return await asyncio.wait_for(answered, ANSWER_TIMEOUT)
            finally:
                _pending.pop(token, None)
        finally:
            bus.remove_message_handler(on_message)


portal = Portal()


def _paths(results: dict[str, Any]) -> list[str]:
    return [
        urllib.parse.unquote(urllib.parse.urlsplit(uri).path) for uri in results.get("uris", [])
    ]


def _access(path: str) -> str:
    return "read-write" if os.access(path, os.W_OK) else "read-only"


async def request_files(
    reason: str,
    access: Literal["read", "read-write"] = "read",
    folder: bool = False,
    multiple: bool = False,
    paths: Sequence[str] = (),
) -> str:
    """Ask the user to let you open files, or a folder, that you were not given. `reason`
    is shown to the user: say what you need and why. The user picks what to grant and
    whether you may change it (changes are staged for their review). Returns the paths
    granted and their access, or that the user said no."""
    what = "a folder" if folder else ("files" if multiple or len(paths) > 1 else "a file")
    named = f": {', '.join(paths)}" if paths else ""
    title = f"{reason.strip()} (asks for {what}{named}, {access})"
    options = {
        "directory": Variant("b", folder),
        "multiple": Variant("b", multiple or len(paths) > 1),
        "accept_label": Variant("s", "Grant"),
    }
    if paths and paths[0].startswith("/"):
        # Where the user's file dialog opens: a hint, the user still picks.
        start = paths[0] if folder else os.path.dirname(paths[0]) or "/"
        options["current_folder"] = Variant("ay", start.encode() + b"\0")
    try:
        code, results = await portal.ask("OpenFile", title, options)
    except (TimeoutError, RuntimeError, OSError) as e:
        return f"Airlock could not ask the user: {e or type(e).__name__}"
    if code != 0:
        return (
            (
                "The user denied the request: you were not given access. Do not ask again "
                "for the same thing unless the user tells you to."
            )
            if code == 1
            else ("The request ended without a grant (Airlock could not deliver it).")
        )
    granted = [f"{path} ({_access(path)})" for path in _paths(results)]
    return "The user granted: " + "; ".join(granted) + ". You can use these paths now."


async def save_file(reason: str, name: str, content: str) -> str:
    """Hand the user a new file: they choose where it goes. `name` is the suggested file
    name, `reason` is shown to the user. The file is staged for their review."""
    data = content.encode()
    if len(data) > MAX_SAVE:
        return f"Not saved: {len(data)} bytes is more than {MAX_SAVE} (write it in parts)."
    if "/" in name or name in ("", ".", ".."):
        return "Not saved: `name` must be a plain file name, without folders."
    try:
        code, results = await portal.ask(
            "SaveFile",
            reason.strip(),
            {"current_name": Variant("s", name), "accept_label": Variant("s", "Save")},
        )
    except (TimeoutError, RuntimeError, OSError) as e:
        return f"Airlock could not ask the user: {e or type(e).__name__}"
    if code != 0:
        return (
            "The user did not let you save the file."
            if code == 1
            else ("The save ended without a place to write (Airlock could not deliver it).")
        )
    paths = _paths(results)
    if not paths:
        return "The save ended without a place to write."
    Path(paths[0]).write_bytes(data)
    return (
        f"Saved {len(data)} bytes as {paths[0]}; it is staged, and reaches the user's "
        "files when they approve it."
    )


async def request_host(host: str, port: int, reason: str) -> str:
    """Ask the user to let you reach a network host that your profile does not list, for
    the rest of this session (e.g. docs.python.org, 443). `reason` is shown to the user:
    say what you need from it and why."""
    try:
        bus = await portal.connect()
        reply = await bus.call(
            Message(
                destination=PORTAL,
                path=PORTAL_PATH,
                interface=NETWORK,
                member="RequestHost",
                signature="sus",
                body=[host, port, reason.strip()],
            )
        )
    except (RuntimeError, OSError) as e:
        return f"Airlock could not ask the user: {e or type(e).__name__}"
    if reply is None or reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        return f"Airlock refused the request: {detail}"
    answer = str(reply.body[0])
    if answer == "allowed":
        return (
            f"The user allowed {host}:{port} for this session: you can reach it now, "
            "through the proxy like any allowed host."
        )
    if answer == "denied":
        return (
            f"The user denied {host}:{port}: it stays unreachable. Do not ask again "
            "unless the user tells you to."
        )
    return f"Not available: {answer.removeprefix('unavailable: ')}."


async def status() -> str:
    """What you have in this Airlock session: the folders and files granted (and whether
    you may change them), files waiting in the save area, your requests still waiting for
    the user, and the model routes and proxy your network goes through."""
    lines = [f"Airlock session {os.environ.get('AIRLOCK_SESSION', '?')}."]
    granted = _granted()
    lines.append(
        "Granted: "
        + (
            "; ".join(f"{path} ({mode})" for path, mode in granted)
            if granted
            else "nothing yet (use request_files)."
        )
    )
    saved = sorted(str(p) for p in SAVES.rglob("*") if p.is_file()) if SAVES.is_dir() else []
    lines.append("Staged saves: " + (", ".join(saved) if saved else "none."))
    lines.append("Writes under read-write grants are staged until the user reviews them.")
    lines.append(
        "Waiting for the user: " + ("; ".join(_pending.values()) if _pending else "nothing.")
    )
    routes = sorted(k for k in os.environ if k.startswith("AIRLOCK_ROUTE_"))
    if routes:
        lines.append("Routes: " + ", ".join(f"{k} = {os.environ[k]}" for k in routes))
    return "\n".join(lines)


DOCUMENTS = Path("/run/airlock/doc")
# Mounts that are the image's or Airlock's own, never a grant.
NOT_GRANTS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/run/airlock")


def _granted() -> list[tuple[str, str]]:
    """Grants are the bind mounts Airlock made at the user's own paths, and the files
    handed over mid-run under /run/airlock/doc."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        # mountinfo escapes spaces and the like as octal (\040).
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        # "/" and /tmp are the image's; HOME is the agent's own scratch home, not a grant.
        home = os.environ.get("HOME", "/tmp")
        if target in ("/", "/tmp", home) or any(
            target == p or target.startswith(p + "/") for p in NOT_GRANTS
        ):
            continue
        found.append((target, "read-only" if "ro" in fields[5].split(",") else "read-write"))
    if DOCUMENTS.is_dir():
        for path in sorted(DOCUMENTS.glob("*/*")):
            found.append((str(path), _access(str(path))))
    return found
