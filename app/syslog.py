"""The audit log's records as syslog messages (RFC 5424 with structured data), and a sender
that never waits: to the local socket (`/dev/log`, which the journal reads on systemd
desktops), or to an address over UDP or TCP.

The message is the record's OCSF event (app/ocsf.py, which carries the record itself, so a
collector can check the chain); the structured data repeats what a collector filters on:
`[airlock@32473 seq="…" kind="…" session="…" hash="…" prev="…"]`. 32473 is the private
enterprise number RFC 5612 sets aside for documentation: Airlock has none of its own.
Facility 13 (log audit); severity from the event's.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from app.audit import AuditRecord, record_line
from app.errors import AirlockError
from app.ocsf import LOW, MEDIUM, to_ocsf

FACILITY = 13  # log audit
SD_ID = "airlock@32473"
_SEVERITY = {LOW: 5, MEDIUM: 4}  # OCSF severity -> syslog: notice, warning; else info (6)
_SD_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})


def rfc5424(record: AuditRecord, *, hostname: str, version: str, procid: int) -> bytes:
    """One record as an RFC 5424 message."""
    line = record_line(record) or b""
    event = to_ocsf(record, line, hostname=hostname, version=version)
    severity = _SEVERITY.get(event["severity_id"], 6)
    stamp = datetime.fromtimestamp(record.time, UTC).isoformat(timespec="microseconds")
    params = {"seq": str(record.seq), "kind": record.kind, "session": record.session or "-",
              "hash": record.hash, "prev": record.prev}
    data = " ".join(f'{k}="{v.translate(_SD_ESCAPES)}"' for k, v in params.items())
    head = (f"<{FACILITY * 8 + severity}>1 {stamp.replace('+00:00', 'Z')} "
            f"{_field(hostname, 255)} airlock {procid} {_field(record.kind, 32)} "
            f"[{SD_ID} {data}] ")
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=True)
    return head.encode("ascii", "replace") + b"\xef\xbb\xbf" + body.encode("ascii")


def _field(text: str, limit: int) -> str:
    """A header field: printable ASCII without spaces, or "-"."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


@dataclass(frozen=True, slots=True)
class Target:
    """Where messages go: a unix datagram socket, or host and port over UDP or TCP."""

    scheme: str  # "unix", "udp" or "tcp"
    address: str  # a socket path, or a host
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Target:
        """`/dev/log`, `unix:/path`, `udp://host:514` or `tcp://host:514`."""
        if text.startswith("/"):
            return cls("unix", text)
        scheme, sep, rest = text.partition(":")
        if scheme == "unix" and sep and rest:
            return cls("unix", rest)
        if scheme in ("udp", "tcp") and rest.startswith("//"):
            host, colon, port = rest[2:].rpartition(":")
            if colon and host and port.isdigit() and 0 < int(port) < 65536:
                return cls(scheme, host.strip("[]"), int(port))
        raise AirlockError(f"{text!r} is not a syslog target (use /dev/log, unix:PATH, "
                           "udp://HOST:PORT or tcp://HOST:PORT)")


class SyslogSender:
    """Sends messages without waiting on a collector: a send the collector cannot take now
    (gone, not listening, its buffer full) fails at once, and the caller keeps the record to
    send again later."""

    def __init__(self, target: Target, timeout: float = 2.0) -> None:
        self.target = target
        self._timeout = timeout
        self._socket: socket.socket | None = None

    def send(self, message: bytes) -> str | None:
        """None once the message is sent, else why not."""
        try:
            sock = self._connected()
            if self.target.scheme == "tcp":
                # RFC 6587 octet counting: a message may hold newlines.
                sock.sendall(str(len(message)).encode() + b" " + message)
            elif self.target.scheme == "unix":
                sock.send(message, socket.MSG_DONTWAIT)
            else:
                sock.send(message)
            return None
        except OSError as e:
            self.close()
            return os.strerror(e.errno) if e.errno else (str(e) or type(e).__name__)

    def _connected(self) -> socket.socket:
        if self._socket is not None:
            return self._socket
        target = self.target
        if target.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(target.address)
            except OSError:
                sock.close()
                raise
        else:
            kind = socket.SOCK_STREAM if target.scheme == "tcp" else socket.SOCK_DGRAM
            info = socket.getaddrinfo(target.address, target.port, type=kind)[0]
            sock = socket.socket(info[0], kind)
            sock.settimeout(self._timeout)
            try:
                sock.connect(info[4])
            except OSError:
                sock.close()
                raise
        self._socket = sock
        return sock

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
