"""The audit log in OCSF: each record as an Open Cybersecurity Schema Framework 1.3.0 event.

Security teams' SIEMs ingest OCSF, so `airlock audit export --format ocsf` and the syslog
forwarder (app/forward.py) speak it beside Airlock's own records. The mapping is a pure
function of the record and the `Origin` (which machine, which Airlock), so that `verify` can
re-derive every event from the record it carries and find any field edited after export.

Classes used, by record kind:
- file.opened/read/written/created/deleted/moved → File System Activity (1001);
- session.started and the ends of a session → Process Activity (1007): the session's
  container is the process (its uid is the session id);
- net.request → HTTP Activity (4002); net.tunnel, net.refused, net.blocked → Network
  Activity (4001);
- everything else (grants, requests, commits, gaps, kinds newer than this mapping) → Base
  Event (0) with activity "Other" and the kind as its name.

Every event carries the exact line of the native record under `unmapped.airlock.record`,
so the hash chain stays verifiable from an OCSF export (see `record_line`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from app.audit import AuditRecord, Verification, log_lines, parse, verify_lines

VERSION = "1.3.0"

# Severity ids of OCSF: 1 informational, 2 low, 3 medium, 4 high.
INFORMATIONAL, LOW, MEDIUM, HIGH = 1, 2, 3, 4

_FILE_ACTIVITY = {
    "file.created": (1, "Create"),
    "file.read": (2, "Read"),
    "file.written": (3, "Update"),
    "file.deleted": (4, "Delete"),
    "file.moved": (5, "Rename"),
    "file.opened": (14, "Open"),
}
_SESSION_ENDS = {"session.exited", "session.oom-killed", "session.timed-out", "session.swept"}
_HTTP_METHODS = {
    "CONNECT": 1,
    "DELETE": 2,
    "GET": 3,
    "HEAD": 4,
    "OPTIONS": 5,
    "POST": 6,
    "PUT": 7,
    "TRACE": 8,
}
_HTTP_ACTIVITY_NAMES = {
    1: "Connect",
    2: "Delete",
    3: "Get",
    4: "Head",
    5: "Options",
    6: "Post",
    7: "Put",
    8: "Trace",
    99: "Other",
}
# Kinds that say something went wrong or was tried against the sandbox.
_SEVERITY = {
    "net.blocked": HIGH,
    "audit.gap": MEDIUM,
    "audit.recovered": MEDIUM,
    "activity.gap": MEDIUM,
    "activity.unwatched": MEDIUM,
    "file.unwatched": MEDIUM,
    "stream.dropped": MEDIUM,
    "net.refused": LOW,
    "changes.refused": LOW,
    "changes.conflict": LOW,
    "session.oom-killed": LOW,
    "session.limit-hit": LOW,
    "session.timed-out": LOW,
}
_SEVERITY_NAMES = {INFORMATIONAL: "Informational", LOW: "Low", MEDIUM: "Medium", HIGH: "High"}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the records were made: the host's name and Airlock's version."""

    hostname: str
    product_version: str

    @classmethod
    def here(cls) -> Origin:
        try:
            version = metadata.version("airlock")
        except metadata.PackageNotFoundError:
            version = "0"
        return cls(socket.gethostname(), version)

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> Origin | None:
        """The origin an exported event names, or None if it names none."""
        meta = event.get("metadata")
        product = meta.get("product") if isinstance(meta, Mapping) else None
        device = event.get("unmapped", {}).get("airlock", {}).get("host")
        version = product.get("version") if isinstance(product, Mapping) else None
        if isinstance(device, str) and isinstance(version, str):
            return cls(device, version)
        return None


def to_ocsf(record: AuditRecord, line: bytes, origin: Origin) -> dict[str, Any]:
    """The OCSF event for one audit record; `line` is the record exactly as logged."""
    class_uid, category_uid, activity_id, activity_name, fields = _classify(record, origin)
    severity = severity_of(record.kind)
    event: dict[str, Any] = {
        "class_uid": class_uid,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": severity,
        "severity": _SEVERITY_NAMES[severity],
        "time": round(record.time * 1000),
        "message": f"{record.kind} {record.subject}",
        "metadata": {
            "version": VERSION,
            "product": {
                "name": "Airlock",
                "vendor_name": "Airlock",
                "version": origin.product_version,
            },
            "uid": record.hash,
            "sequence": record.seq,
            "log_name": "airlock-audit",
            "event_code": record.kind,
            **({"correlation_uid": record.session} if record.session else {}),
        },
        "unmapped": {
            "airlock": {"host": origin.hostname, "record": line.decode("ascii")},
        },
    }
    event.update(fields)
    return event


def severity_of(kind: str) -> int:
    """The OCSF severity id of a record kind."""
    return _SEVERITY.get(kind, INFORMATIONAL)


def record_line(event: Mapping[str, Any]) -> bytes | None:
    """The native record an OCSF event carries, as the line it was in the log."""
    carried = event.get("unmapped")
    carried = carried.get("airlock") if isinstance(carried, Mapping) else None
    line = carried.get("record") if isinstance(carried, Mapping) else None
    if not isinstance(line, str):
        return None
    try:
        return line.encode("ascii")
    except UnicodeEncodeError:
        return None


def dumps(event: Mapping[str, Any]) -> bytes:
    """One event as a line of JSON (sorted keys, so equal events are equal bytes)."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _classify(record: AuditRecord, origin: Origin) -> tuple[int, int, int, str, dict[str, Any]]:
    """(class, category, activity id, activity name, the class's own fields)."""
    kind, details = record.kind, record.details
    if kind in _FILE_ACTIVITY:
        activity, name = _FILE_ACTIVITY[kind]
        return (
            1001,
            1,
            activity,
            name,
            {
                "actor": _actor(record),
                "device": _device(origin),
                "file": _file(record.subject, details),
            },
        )
    if kind == "session.started" or kind in _SESSION_ENDS:
        process: dict[str, Any] = {"uid": record.session or record.subject}
        if isinstance(profile := details.get("profile"), str):
            process["name"] = profile
        fields: dict[str, Any] = {
            "actor": _actor(record),
            "device": _device(origin),
            "process": process,
        }
        if kind == "session.started":
            return 1007, 1, 1, "Launch", fields
        if isinstance(code := details.get("code"), int):
            fields["exit_code"] = code
        return 1007, 1, 2, "Terminate", fields
    if kind == "net.request":
        return _http(record)
    if kind in ("net.tunnel", "net.refused", "net.blocked"):
        return _network(record)
    return 0, 0, 99, kind, {}


def _actor(record: AuditRecord) -> dict[str, Any]:
    # The agent is known to Airlock by its session; the container has no host pid to give.
    actor: dict[str, Any] = {"app_name": "Airlock"}
    if record.session:
        actor["session"] = {"uid": record.session}
    return actor


def _device(origin: Origin) -> dict[str, Any]:
    return {"type_id": 0, "hostname": origin.hostname}


def _file(path: str, details: Mapping[str, Any]) -> dict[str, Any]:
    name = path.rstrip("/").rsplit("/", 1)[-1] or path
    found: dict[str, Any] = {
        "name": name,
        "path": path,
        "type_id": 2 if details.get("directory") else 1,
    }
    if isinstance(size := details.get("size"), int):
        found["size"] = size
    if isinstance(digest := details.get("sha256"), str):
        found["hashes"] = [{"algorithm_id": 3, "value": digest}]
    return found


def _endpoint(record: AuditRecord) -> dict[str, Any]:
    details = record.details
    host = details.get("host")
    if not isinstance(host, str) or not host:
        host = record.subject.rsplit(":", 1)[0] if ":" in record.subject else record.subject
    endpoint: dict[str, Any] = {"hostname": host or "-"}
    if isinstance(port := details.get("port"), int) and 0 < port < 65536:
        endpoint["port"] = port
    return endpoint


def _traffic(details: Mapping[str, Any]) -> dict[str, Any]:
    out = details.get("bytes_up")
    back = details.get("bytes_down")
    traffic: dict[str, Any] = {}
    if isinstance(out, int):
        traffic["bytes_out"] = out
    if isinstance(back, int):
        traffic["bytes_in"] = back
    return traffic


def _status(details: Mapping[str, Any]) -> dict[str, Any]:
    decision = details.get("decision")
    if decision not in ("allow", "deny"):
        return {}
    status: dict[str, Any] = {
        "status_id": 1 if decision == "allow" else 2,
        "status": "Success" if decision == "allow" else "Failure",
    }
    if isinstance(reason := details.get("reason"), str) and reason:
        status["status_detail"] = reason
    return status


def _http(record: AuditRecord) -> tuple[int, int, int, str, dict[str, Any]]:
    details = record.details
    method = details.get("method")
    method = method if isinstance(method, str) else ""
    activity = _HTTP_METHODS.get(method.upper(), 99)
    endpoint = _endpoint(record)
    path = details.get("path") if isinstance(details.get("path"), str) else "/"
    url: dict[str, Any] = {
        "hostname": endpoint["hostname"],
        "path": urlsplit(str(path)).path or "/",
    }
    if "port" in endpoint:
        url["port"] = endpoint["port"]
    fields: dict[str, Any] = {
        "dst_endpoint": endpoint,
        # OCSF 1.3.0 names eight methods; another (PATCH, WebDAV's) is activity "Other",
        # named by activity_name, and the record it carries has it.
        "http_request": {"url": url, **({"http_method": method.upper()} if activity != 99 else {})},
        "http_response": {
            "code": details.get("status") if isinstance(details.get("status"), int) else 0
        },
        **_status(details),
    }
    if traffic := _traffic(details):
        fields["traffic"] = traffic
    name = _HTTP_ACTIVITY_NAMES[activity] if activity != 99 else (method.upper() or "Other")
    return 4002, 4, activity, name, fields


def _network(record: AuditRecord) -> tuple[int, int, int, str, dict[str, Any]]:
    details = record.details
    activity, name = (6, "Traffic") if record.kind == "net.tunnel" else (5, "Refuse")
    fields: dict[str, Any] = {"dst_endpoint": _endpoint(record), **_status(details)}
    if record.kind == "net.blocked":
        fields.update(
            status_id=2,
            status="Failure",
            status_detail="a packet tried to leave around the proxy and was dropped",
        )
    if traffic := _traffic(details):
        fields["traffic"] = traffic
    return 4001, 4, activity, name, fields


def export(directory: Path, out: IO[bytes], origin: Origin) -> int:
    """Write the whole log as OCSF events, one JSON object per line, oldest first; return
    the number of events. A torn last line (a crash mid-write) has no record to map: it is
    left out, as the next writer will cut it off the log too."""
    count = 0
    for line, whole in log_lines(directory):
        record = parse(line) if whole else None
        if isinstance(record, AuditRecord):
            out.write(dumps(to_ocsf(record, line, origin)) + b"\n")
            count += 1
    return count


EDITED = "edited: the OCSF fields differ from the record they carry"


def verify(path: Path) -> Verification:
    """Check an OCSF export: every event must be exactly the mapping of the record it
    carries, and the carried records must chain as the log's own do."""
    return verify_lines(_carried(path), files=1, end=path)


def is_export(path: Path) -> bool:
    """Whether a file looks like an OCSF export (its first line is an event with a class)."""
    try:
        with path.open("rb") as file:
            first = file.readline(1 << 20)
    except OSError:
        return False
    try:
        event = json.loads(first)
    except ValueError:
        return False
    return isinstance(event, dict) and "class_uid" in event


def _carried(path: Path) -> Iterator[tuple[Path, int, bytes | str, bool]]:
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):
                yield path, number, "truncated: the last line is incomplete", False
                return
            try:
                event = json.loads(raw)
            except (ValueError, RecursionError):
                yield path, number, "not a JSON event", True
                return
            line = record_line(event) if isinstance(event, dict) else None
            origin = Origin.of(event) if isinstance(event, dict) else None
            if line is None or origin is None:
                yield path, number, "not an Airlock OCSF event: no record under unmapped", True
                return
            record = parse(line)
            if isinstance(record, str):
                yield path, number, record, True
                return
            if dumps(to_ocsf(record, line, origin)) != dumps(event):
                yield path, number, EDITED, True
                return
            yield path, number, line, True
