"""The audit log's live forwarder: every record, as an RFC 5424 syslog message, to the local
syslog socket or an address, for the fleet tooling that already collects logs.

The forwarder reads the log; it is never in the writer's way. Records reach the disk first
(app/audit.py) and a thread follows the log from the last record it delivered, so a
destination that is down or slow never blocks nor loses a local record: the thread waits,
retries, and catches up from the log when the destination answers again. Delivery is at least
once (a record sent just before a crash is sent again after it); the message's sequence id
and hash let a collector drop repeats.

Several Airlock processes share one log (the desktop app, `airlock run`, the daemon): the one
holding `forward.lock` forwards, and `forward.json` says which record was delivered last, so
the next holder continues where the last one stopped.

Configuration: `~/.config/airlock/audit.toml`

    [forward]
    to = "unix:/dev/log"      # or "udp://HOST:PORT", "tcp://HOST:PORT" (RFC 6587 octet counting)
    format = "native"         # the record's own JSON line, or "ocsf" (app/ocsf.py)
    facility = "authpriv"     # or "auth", "local0" … "local7", "audit"
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.audit import AuditFollower, AuditProblem, AuditRecord
from app.errors import AirlockError
from app.ocsf import HIGH, INFORMATIONAL, LOW, MEDIUM, Origin, dumps, severity_of, to_ocsf

log = logging.getLogger(__name__)

CONFIG_FILE = "audit.toml"
LOCK_FILE = "forward.lock"
STATE_FILE = "forward.json"
# Structured data: "meta" and "origin" are IANA-registered SD-IDs (RFC 5424, 7.2/7.3);
# Airlock's own parameters need a private SD-ID, name@<enterprise number>. 32473 is the
# number RFC 5612 reserves for examples: a collector keys on "airlock@32473" as on any name.
SD_ID = "airlock@32473"
FACILITIES = {
    "auth": 4,
    "authpriv": 10,
    "audit": 13,
    **{f"local{n}": 16 + n for n in range(8)},
}
# OCSF severity → syslog severity (6 informational, 5 notice, 4 warning).
_SYSLOG_SEVERITY = {INFORMATIONAL: 6, LOW: 5, MEDIUM: 5, HIGH: 4}
_BOM = b"\xef\xbb\xbf"


class ForwardError(AirlockError):
    """The forwarder's configuration is invalid, or its destination cannot be used."""


class _ForwardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: Annotated[str, Field(min_length=1)]
    format: Literal["native", "ocsf"] = "native"
    facility: Literal[
        "auth",
        "authpriv",
        "audit",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ] = "authpriv"


class _AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    forward: _ForwardSettings | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """Where messages go: a unix datagram socket, or a UDP or TCP address."""

    scheme: Literal["unix", "udp", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Destination:
        if text.startswith("unix:"):
            path = text.removeprefix("unix:").removeprefix("//")
            if not path.startswith("/"):
                raise ForwardError(f"forward to {text!r}: a unix socket needs an absolute path")
            return cls("unix", path=path)
        parts = urlsplit(text)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname:
            raise ForwardError(
                f"forward to {text!r}: expected unix:/PATH, udp://HOST:PORT or tcp://HOST:PORT"
            )
        try:
            port = parts.port
        except ValueError:
            port = None
        if not port:
            raise ForwardError(f"forward to {text!r}: the port is missing or not a number")
        scheme: Literal["udp", "tcp"] = "udp" if parts.scheme == "udp" else "tcp"
        return cls(scheme, host=parts.hostname, port=port)

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    destination: Destination
    format: Literal["native", "ocsf"] = "native"
    facility: str = "authpriv"


def load_config(config_dir: Path) -> ForwardConfig | None:
    """The forwarder's settings from `audit.toml`, or None if it has no [forward] table."""
    path = config_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ForwardError(f"{path}: cannot read: {e}") from e
    try:
        settings = _AuditSettings.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise ForwardError(f"{path}: not valid TOML: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        message = (
            "unknown key (check the spelling)"
            if first["type"] == "extra_forbidden"
            else first["msg"]
        )
        raise ForwardError(f"{path}: {key}: {message}") from e
    if settings.forward is None:
        return None
    forward = settings.forward
    return ForwardConfig(Destination.parse(forward.to), forward.format, forward.facility)


def syslog_message(
    record: AuditRecord,
    origin: Origin,
    *,
    format: str = "native",
    facility: str = "authpriv",
    pid: int = 0,
) -> bytes:
    """One record as an RFC 5424 message (without transport framing)."""
    line = record.line()
    severity = _SYSLOG_SEVERITY[severity_of(record.kind)]
    pri = FACILITIES[facility] * 8 + severity
    stamp = datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    params = {
        "seq": str(record.seq),
        "hash": record.hash,
        "prev": record.prev,
        "kind": record.kind,
        "session": record.session or "-",
    }
    structured = (
        f'[meta sequenceId="{record.seq % 2147483647 or 1}"]'
        f'[origin software="Airlock" swVersion="{_sd_value(origin.product_version)}"]'
        f"[{SD_ID} " + " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    )
    header = " ".join(
        (
            f"<{pri}>1",
            stamp,
            _header_field(origin.hostname, 255),
            "airlock",
            str(pid or "-"),
            _header_field(record.kind, 32),
            structured,
        )
    )
    body = line if format == "native" else dumps(to_ocsf(record, line, origin))
    return header.encode("ascii") + b" " + _BOM + body


def _sd_value(value: str) -> str:
    # RFC 5424 6.3.3: '"', '\' and ']' are escaped inside a PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, limit: int) -> str:
    # Header fields are PRINTUSASCII (33-126) without spaces; anything else becomes '_'.
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


class _Sender:
    """One connection to the destination, reopened after a failure."""

    def __init__(self, destination: Destination, timeout: float) -> None:
        self.destination = destination
        self.timeout = timeout
        self._socket: socket.socket | None = None

    def send(self, message: bytes) -> None:
        if self._socket is None:
            self._socket = self._open()
        try:
            if self.destination.scheme == "tcp":
                self._socket.sendall(str(len(message)).encode() + b" " + message)
            else:
                self._socket.send(message)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _open(self) -> socket.socket:
        target = self.destination
        if target.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address: str | tuple[str, int] = target.path
        else:
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            kind = socket.SOCK_STREAM if target.scheme == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(family, kind)
            address = (target.host, target.port)
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock


class AuditForwarder:
    """Follows the audit log in a thread of its own and sends each record to `config`'s
    destination. `start()` and `stop()`; `run(once=True)` forwards what is there and returns
    (for `airlock audit forward --once`)."""

    def __init__(
        self,
        directory: Path,
        config: ForwardConfig,
        origin: Origin,
        *,
        poll: float = 0.2,
        retry: tuple[float, float] = (0.5, 30.0),
        timeout: float = 5.0,
    ) -> None:
        self.directory = directory
        self.config = config
        self.origin = origin
        self._poll = poll
        self._retry = retry
        self._sender = _Sender(config.destination, timeout)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._delivered = 0
        self._saved = -1  # the seq forward.json holds
        self._state_saved = 0.0
        self.sent = 0  # messages sent by this forwarder (repeats after a failure included)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name="audit-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._sender.close()

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception:
            # A thread's exception would vanish; the local log is unaffected, so say it loudly.
            log.exception("the audit forwarder to %s stopped", self.config.destination)

    def run(self, *, once: bool = False) -> int:
        """Forward until stopped (or, with `once`, until the end of the log); returns the
        number of records delivered."""
        lock = self._hold_lock(once)
        if lock is None:
            return 0
        try:
            self._delivered = self._read_state()
            follower = AuditFollower(self.directory, from_start=True)
            count = 0
            while True:
                # Once asked to stop, one last pass sends what the log holds by now (the
                # end of the session that is closing), unless the destination fails.
                stopping = self._stopping.is_set()
                new = follower.poll()
                for found in new:
                    if isinstance(found, AuditProblem):
                        log.warning("audit forwarder: skipped a bad record at %s", found)
                        continue
                    if found.seq <= self._delivered:
                        continue
                    if not self._deliver(found):
                        return count
                    count += 1
                self._save_state(force=not new)
                if stopping or (once and not new):
                    return count
                self._stopping.wait(self._poll)
        finally:
            self._save_state(force=True)
            os.close(lock)

    def _hold_lock(self, once: bool) -> int | None:
        """The lock that makes this the one forwarder of the log; waits for it unless `once`."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if once:
                    os.close(fd)
                    raise ForwardError(
                        "another Airlock process is forwarding this audit log already"
                    ) from None
            if self._stopping.wait(2.0):
                os.close(fd)
                return None

    def _deliver(self, record: AuditRecord) -> bool:
        """Send one record, retrying until it goes or the forwarder stops."""
        message = syslog_message(
            record,
            self.origin,
            format=self.config.format,
            facility=self.config.facility,
            pid=os.getpid(),
        )
        delay, failed_since = self._retry[0], 0.0
        while True:
            try:
                self._sender.send(message)
            except OSError as e:
                if not failed_since:
                    failed_since = time.monotonic()
                    log.warning(
                        "audit forwarder: %s is not taking records (%s); the local "
                        "log is complete, retrying",
                        self.config.destination,
                        e,
                    )
                self._save_state(force=True)
                if self._stopping.wait(delay):
                    return False
                delay = min(delay * 2, self._retry[1])
                continue
            if failed_since:
                log.warning(
                    "audit forwarder: %s takes records again after %.0f s",
                    self.config.destination,
                    time.monotonic() - failed_since,
                )
            self.sent += 1
            self._delivered = record.seq
            return True

    def _read_state(self) -> int:
        try:
            raw = json.loads((self.directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.warning(
                "audit forwarder: %s unreadable (%s); forwarding from the start", STATE_FILE, e
            )
            return 0
        seq = raw.get("seq") if isinstance(raw, dict) else None
        same = isinstance(raw, dict) and raw.get("to") == str(self.config.destination)
        # Another destination has seen nothing yet: it gets the whole log.
        return seq if isinstance(seq, int) and seq >= 0 and same else 0

    def _save_state(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._saved == self._delivered or (not force and now - self._state_saved < 1.0):
            return
        self._saved = self._delivered
        self._state_saved = now
        path = self.directory / STATE_FILE
        temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}")
        with contextlib.suppress(OSError):
            temporary.write_text(
                json.dumps({"seq": self._delivered, "to": str(self.config.destination)})
            )
            temporary.replace(path)
