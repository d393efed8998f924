"""A private D-Bus bus per session: a `dbus-daemon` of its own whose policy lets the agent reach
the portal and nothing else.

The daemon runs under the supervisor's uid, which is usually also the agent's, so its policy
cannot tell the two apart by user. It is therefore locked in two steps: first the portal's
name may be owned; once the supervisor owns it, the configuration is rewritten so that no
connection may own any name at all and reloaded. The agent, which connects only after that,
can neither claim nor queue for a name, and may call only the portal's interfaces and the
bus driver's basic methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import quoteattr

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

PORTAL_NAME = "org.freedesktop.portal.Desktop"
# What the agent may call on the portal's connection; everything else is refused by the
# daemon before the supervisor sees it.
PORTAL_INTERFACES = (
    "org.freedesktop.portal.FileChooser",
    "org.freedesktop.portal.Request",
    "org.airlock.Network1",  # RequestHost: portal/network.py
    "org.freedesktop.DBus.Properties",
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Peer",
)
# What the agent may call on the bus driver: enough for any client library (Hello, AddMatch,
# GetNameOwner, …), minus what changes the bus (activation environment, config reload) or
# watches other connections' traffic (Monitoring, Debug.Stats are not listed at all).
DRIVER = "org.freedesktop.DBus"
DRIVER_INTERFACES = (DRIVER, "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer")
DRIVER_DENIED_MEMBERS = ("UpdateActivationEnvironment", "ReloadConfig")

# Where the bus appears inside the agent's container.
CONTAINER_BUS_DIR = PurePosixPath("/run/airlock/bus")
CONTAINER_BUS_ADDRESS = f"unix:path={CONTAINER_BUS_DIR}/bus"

START_TIMEOUT = 10.0
STOP_GRACE = 2.0


class BusError(RuntimeError):
    """The private bus could not be started, locked or claimed."""


@dataclass(frozen=True, slots=True)
class BusLimits:
    """dbus-daemon's own limits, tight for one agent: a flood of messages or connections is
    cut off by the daemon before it reaches the supervisor's loop."""

    max_message_size: int = 1 << 20
    max_incoming_bytes: int = 4 << 20
    max_outgoing_bytes: int = 4 << 20
    max_incoming_unix_fds: int = 16
    max_connections: int = 32
    max_match_rules: int = 128
    max_replies: int = 64
    max_names: int = 4
    auth_timeout_ms: int = 5_000


@dataclass(frozen=True, slots=True)
class BusLayout:
    """Files of one session's bus. Only `socket_dir` is mounted into the container: the
    configuration stays out of the agent's sight."""

    runtime_dir: Path

    @property
    def socket_dir(self) -> Path:
        return self.runtime_dir / "bus"

    @property
    def socket(self) -> Path:
        return self.socket_dir / "bus"

    @property
    def config(self) -> Path:
        return self.runtime_dir / "bus.conf"

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"


def bus_config(socket: Path, *, locked: bool, limits: BusLimits = BusLimits()) -> str:
    """The daemon's configuration. Unlocked, the portal's name may be claimed; locked, no name
    may be owned by anyone and the configuration can no longer be reloaded through the bus."""
    if len(os.fsencode(socket)) >= 108:
        raise BusError(f"{socket}: too long for a unix socket path (108 bytes at most)")
    lines = [
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"',
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
        "<busconfig>",
        "  <type>session</type>",
        f"  <listen>unix:path={_text(str(socket))}</listen>",
        "  <auth>EXTERNAL</auth>",
        '  <policy context="default">',
        # Any uid may connect: the agent may run as nobody or as a mapped uid; only the
        # socket's presence in the container grants access to the bus.
        '    <allow user="*"/>',
        '    <deny own="*"/>' if locked else f"    <allow own={quoteattr(PORTAL_NAME)}/>",
        # A policy denies what it does not allow, receiving included.
        '    <allow send_type="signal"/>',
        '    <allow send_type="method_return" send_requested_reply="true"/>',
        '    <allow send_type="error" send_requested_reply="true"/>',
        '    <allow receive_type="method_call"/>',
        '    <allow receive_type="signal"/>',
        '    <allow receive_type="method_return" receive_requested_reply="true"/>',
        '    <allow receive_type="error" receive_requested_reply="true"/>',
        '    <deny send_type="method_call"/>',
    ]
    for interface in DRIVER_INTERFACES:
        lines.append(
            f"    <allow send_destination={quoteattr(DRIVER)} "
            f"send_interface={quoteattr(interface)}/>"
        )
    denied = DRIVER_DENIED_MEMBERS if locked else DRIVER_DENIED_MEMBERS[:1]
    for member in denied:
        lines.append(
            f"    <deny send_destination={quoteattr(DRIVER)} "
            f"send_interface={quoteattr(DRIVER)} send_member={quoteattr(member)}/>"
        )
    for interface in PORTAL_INTERFACES:
        lines.append(
            f"    <allow send_destination={quoteattr(PORTAL_NAME)} "
            f"send_interface={quoteattr(interface)}/>"
        )
    lines.append("  </policy>")
    for name, value in (
        ("max_message_size", limits.max_message_size),
        ("max_incoming_bytes", limits.max_incoming_bytes),
        ("max_outgoing_bytes", limits.max_outgoing_bytes),
        ("max_incoming_unix_fds", limits.max_incoming_unix_fds),
        ("max_completed_connections", limits.max_connections),
        ("max_incomplete_connections", limits.max_connections),
        ("max_connections_per_user", limits.max_connections),
        ("max_match_rules_per_connection", limits.max_match_rules),
        ("max_replies_per_connection", limits.max_replies),
        ("max_names_per_connection", limits.max_names),
        ("auth_timeout", limits.auth_timeout_ms),
    ):
        lines.append(f'  <limit name="{name}">{value}</limit>')
    lines.append("</busconfig>")
    return "\n".join(lines) + "\n"


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class PrivateBus:
    """One dbus-daemon for one session, started and stopped on the supervisor's loop."""

    def __init__(
        self, layout: BusLayout, limits: BusLimits = BusLimits(), daemon: str = "dbus-daemon"
    ) -> None:
        self.layout = layout
        self._limits = limits
        self._daemon = daemon
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._last_words: deque[str] = deque(maxlen=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        executable = shutil.which(self._daemon)
        if executable is None:
            raise BusError(f"{self._daemon} is not installed (Debian: apt install dbus-daemon)")
        self.layout.runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Searchable by the agent's uid, which is not ours when root runs agents as nobody.
        self.layout.socket_dir.mkdir(mode=0o755, exist_ok=True)
        self.layout.socket_dir.chmod(0o755)
        self._write_config(locked=False)
        # If the supervisor dies, even by SIGKILL, the bus goes with it instead of lingering
        # with the session's socket. setpriv (util-linux) asks for that and execs the daemon:
        # a `preexec_fn` would do the same but makes Python fork the whole supervisor on the
        # event loop (100 ms and more under load) instead of a vfork.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv is not None else []
        process = await asyncio.create_subprocess_exec(
            *prefix,
            executable,
            f"--config-file={self.layout.config}",
            "--nofork",
            "--nopidfile",
            "--nosyslog",
            "--print-address=1",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=None if setpriv is not None else _die_with_parent,
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        # Read for the daemon's whole life: a full pipe would stall it.
        self._stderr_task = asyncio.create_task(self._drain(process.stderr))
        try:
            # The daemon prints its address once it listens: the readiness signal.
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"unix:"):
            if process.returncode is None and not line:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), STOP_GRACE)
            await self.stop()
            said = "; ".join(self._last_words) or "no address printed"
            raise BusError(f"the session bus did not start: {said}")
        log.debug("private bus listening at %s", self.layout.address)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self._last_words.append(text)
            log.debug("dbus-daemon for %s: %s", self.layout.runtime_dir.name, text)

    async def lock(self, supervisor: MessageBus) -> None:
        """Forbids every name from now on and reloads the daemon; call it once the portal's
        name is owned, before the agent exists."""
        self._write_config(locked=True)
        reply = await supervisor.call(
            Message(
                destination=DRIVER,
                path="/org/freedesktop/DBus",
                interface=DRIVER,
                member="ReloadConfig",
            )
        )
        if reply.message_type is MessageType.ERROR:
            raise BusError(f"the session bus refused to lock: {reply.error_name}: {reply.body}")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                process.kill()
                await process.wait()
        elif process is not None:
            await process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), STOP_GRACE)
            self._stderr_task.cancel()
            self._stderr_task = None
        for path in (self.layout.socket, self.layout.config):
            # Not there (the daemon removed its socket), or not ours to remove.
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()

    def _write_config(self, *, locked: bool) -> None:
        text = bus_config(self.layout.socket, locked=locked, limits=self._limits)
        temporary = self.layout.config.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        # Replaced atomically: a reload must never read half a policy.
        os.replace(temporary, self.layout.config)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec, where setpriv is missing: the bus dies with the
    thread that started it, as `setpriv --pdeathsig` would arrange."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
