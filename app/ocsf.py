"""The audit log's records as OCSF events (Open Cybersecurity Schema Framework 1.5), the JSON
that security teams' SIEMs ingest; pure functions.

Each record becomes one event of the class that fits it — HTTP Activity for the proxy's
requests and key uses, Network Activity for tunnels and blocked packets, File System Activity
for file events, Process Activity for a session's start and end, User Access Management for
grants, Event Log Activity for the log's own events — or a Base Event for the rest (consent
questions, staged changes, output). The record itself rides along byte for byte in
`unmapped.airlock_record`, so the hash chain is verified from an export as from the log
(`native_line`, `app.audit.verify`).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from app.audit import RECORD_KEY, AuditProblem, AuditRecord, lines

OCSF_VERSION = "1.5.0"
VENDOR = "Airlock"

# (class_uid, class_name, category_uid, category_name)
HTTP = (4002, "HTTP Activity", 4, "Network Activity")
NETWORK = (4001, "Network Activity", 4, "Network Activity")
FILES = (1001, "File System Activity", 1, "System Activity")
PROCESS = (1007, "Process Activity", 1, "System Activity")
EVENT_LOG = (1008, "Event Log Activity", 1, "System Activity")
USER_ACCESS = (3005, "User Access Management", 3, "Identity & Access Management")
BASE = (0, "Base Event", 0, "Uncategorized")

HTTP_METHODS = {"CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6,
                "PUT": 7, "TRACE": 8}
FILE_ACTIVITIES = {"file.created": 1, "file.read": 2, "file.written": 3, "file.deleted": 4,
                   "file.moved": 5, "file.opened": 14}
OTHER = 99
INFORMATIONAL, LOW, MEDIUM = 1, 2, 3
SUCCESS, FAILURE = 1, 2


def to_ocsf(record: AuditRecord, line: bytes, *, hostname: str, version: str
            ) -> dict[str, Any]:
    """The OCSF event for `record`, whose exact line in the log is `line`; `hostname` names
    the machine, `version` Airlock's."""
    kind, details = record.kind, record.details
    identity, activity, fields = _classify(record, hostname)
    class_uid, class_name, category_uid, category_name = identity
    event: dict[str, Any] = {
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity, "type_uid": class_uid * 100 + activity,
        "time": int(record.time * 1000),
        "severity_id": _severity(kind, details),
        "message": f"{kind}: {record.subject}"[:1000],
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Airlock", "vendor_name": VENDOR, "version": version},
            "uid": record.hash, "sequence": record.seq, "log_name": "airlock-audit",
            "event_code": kind,
            **({"correlation_uid": record.session} if record.session else {}),
        },
        "unmapped": {RECORD_KEY: line.decode("ascii")},
    }
    event.update(fields)
    return event


def export_ocsf(directory: Path, out: IO[bytes], *, hostname: str, version: str
                ) -> tuple[int, int]:
    """Write the log as OCSF events, one JSON object a line; returns (events written, lines
    that were not records and were left out). `airlock audit verify` checks the chain of the
    file written."""
    written = skipped = 0
    for line, record in lines(directory):
        if isinstance(record, AuditProblem):
            skipped += 1
            continue
        event = to_ocsf(record, line, hostname=hostname, version=version)
        out.write(json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
        written += 1
    return written, skipped


def native_line(event: Mapping[str, Any]) -> bytes | None:
    """The audit record an exported event carries, as its line in the log; None if the event
    carries none."""
    unmapped = event.get("unmapped")
    if not isinstance(unmapped, Mapping):
        return None
    line = unmapped.get(RECORD_KEY)
    if not isinstance(line, str):
        return None
    try:
        return line.encode("ascii")
    except UnicodeEncodeError:
        return None  # the log is ASCII: an edited export


def _severity(kind: str, details: Mapping[str, Any]) -> int:
    if kind in ("net.refused", "net.blocked", "changes.refused", "changes.conflict",
                "audit.gap", "audit.recovered", "session.oom-killed"):
        return LOW
    if details.get("held") or details.get("findings"):
        return MEDIUM
    return INFORMATIONAL


def _classify(record: AuditRecord, hostname: str
              ) -> tuple[tuple[int, str, int, str], int, dict[str, Any]]:
    kind, details, subject = record.kind, record.details, record.subject
    device = {"type_id": 0, "hostname": hostname}
    actor = {"app_name": "Airlock", **({"app_uid": record.session} if record.session else {})}
    if kind in ("net.request", "net.refused", "net.credential"):
        method = str(details.get("method", "")).upper()
        fields: dict[str, Any] = {
            "http_request": {"http_method": method[:20],
                             "url": {"hostname": str(details.get("host", "")),
                                     "port": _int(details.get("port")),
                                     "path": str(details.get("path", ""))}},
            "dst_endpoint": {"hostname": str(details.get("host", "")),
                             "port": _int(details.get("port")),
                             **({"ip": details["address"]} if details.get("address") else {})},
            "traffic": {"bytes_out": _int(details.get("bytes_up")),
                        "bytes_in": _int(details.get("bytes_down"))},
            "status_id": FAILURE if kind == "net.refused" else SUCCESS,
            "action_id": 2 if kind == "net.refused" else 1,  # denied, allowed
        }
        if details.get("status"):
            fields["http_response"] = {"code": _int(details.get("status"))}
        if details.get("reason"):
            fields["status_detail"] = str(details["reason"])[:500]
        return HTTP, HTTP_METHODS.get(method, OTHER), fields
    if kind in ("net.tunnel", "net.blocked"):
        host, _, port = subject.rpartition(":")
        fields = {
            "dst_endpoint": {"hostname" if kind == "net.tunnel" else "ip": host or subject,
                             "port": _int(port) if port.isdigit() else 0},
            "traffic": {"bytes_out": _int(details.get("bytes_up")),
                        "bytes_in": _int(details.get("bytes_down"))},
            "status_id": FAILURE if kind == "net.blocked" else SUCCESS,
            "action_id": 2 if kind == "net.blocked" else 1,
        }
        return NETWORK, 5 if kind == "net.blocked" else 6, fields  # refuse, traffic
    if kind in FILE_ACTIVITIES or kind.startswith("file."):
        name = posixpath.basename(subject.rstrip("/")) or subject or "?"
        return FILES, FILE_ACTIVITIES.get(kind, OTHER), {
            "device": device, "actor": actor,
            "file": {"type_id": 0, "name": name[:255], "path": subject}}
    if kind in ("session.started", "session.exited", "session.oom-killed",
                "session.timed-out", "session.swept"):
        process: dict[str, Any] = {"name": str(details.get("profile") or "agent"),
                                   "uid": record.session or subject}
        if details.get("exit_code") is not None:
            process["exit_code"] = _int(details.get("exit_code"))
        return PROCESS, 1 if kind == "session.started" else 2, {
            "device": device, "actor": actor, "process": process}
    if kind in ("grant.added", "grant.revoked"):
        privilege = str(details.get("access") or details.get("mode") or "access")
        return USER_ACCESS, 1 if kind == "grant.added" else 2, {
            "user": {"name": "agent", "uid": record.session or str(details.get("profile", ""))},
            "privileges": [f"{privilege} {subject}"[:500]],
            "resource": {"name": subject[:500], "uid": str(details.get("grant", ""))}}
    if kind.startswith("audit."):
        return EVENT_LOG, OTHER, {"device": device}
    return BASE, OTHER, {}


def _int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return 0
