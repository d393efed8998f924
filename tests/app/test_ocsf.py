"""The audit log as OCSF: every event valid against the OCSF 1.3.0 schema of its class, and
the hash chain verifiable from the export, edits to the OCSF fields included."""

from __future__ import annotations

import dataclasses
import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from app import ocsf
from app.audit import AuditLog, AuditRecord, records
from app.events import Event, EventKind

ORIGIN = ocsf.Origin("desk.example", "0.1.0")

# One of every kind of record the mapping treats on its own, and some it does not.
EVENTS = [
    Event(EventKind.SESSION_STARTED, "s1", "s1", {"profile": "codex", "image": "x"}),
    Event(EventKind.FILE_OPENED, "s1", "/home/ana/src/app/main.py", {}),
    Event(EventKind.FILE_READ, "s1", "/home/ana/src/app/main.py", {}),
    Event(EventKind.FILE_WRITTEN, "s1", "/home/ana/src/app/main.py", {"size": 812}),
    Event(EventKind.FILE_CREATED, "s1", "/home/ana/src/app/new", {"directory": True}),
    Event(EventKind.FILE_DELETED, "s1", "/home/ana/src/app/old.txt", {}),
    Event(EventKind.FILE_MOVED, "s1", "/home/ana/a", {"to": "/home/ana/b"}),
    Event(
        EventKind.NET_REQUEST,
        "s1",
        "api.example.com:443",
        {
            "method": "POST",
            "host": "api.example.com",
            "port": 443,
            "path": "/v1/x?key=***",
            "status": 200,
            "bytes_up": 120,
            "bytes_down": 4096,
            "decision": "allow",
            "rule": "route openai",
            "reason": "",
            "route": "openai",
        },
    ),
    Event(
        EventKind.NET_REQUEST,
        "s1",
        "pkg.example.org:80",
        {
            "method": "PATCH",
            "host": "pkg.example.org",
            "port": 80,
            "path": "/",
            "status": 204,
            "bytes_up": 0,
            "bytes_down": 0,
            "decision": "allow",
            "rule": "",
            "reason": "",
        },
    ),
    Event(
        EventKind.NET_TUNNEL,
        "s1",
        "pypi.org:443",
        {
            "method": "CONNECT",
            "host": "pypi.org",
            "port": 443,
            "status": 200,
            "bytes_up": 900,
            "bytes_down": 90000,
            "decision": "allow",
            "rule": "",
            "reason": "",
        },
    ),
    Event(
        EventKind.NET_REFUSED,
        "s1",
        "evil.example:443",
        {
            "method": "CONNECT",
            "host": "evil.example",
            "port": 443,
            "status": 403,
            "bytes_up": 0,
            "bytes_down": 0,
            "decision": "deny",
            "rule": "",
            "reason": "not in the profile",
        },
    ),
    Event(EventKind.NET_BLOCKED, "s1", "203.0.113.9:53", {"protocol": "udp"}),
    Event(EventKind.GRANT_ADDED, "s1", "/home/ana/src/app", {"mode": "rw"}),
    Event(EventKind.REQUEST_ANSWERED, "s1", "files", {"answer": "deny"}),
    Event(EventKind.SESSION_EXITED, "s1", "s1", {"code": 0, "reason": "exited"}),
    Event(EventKind.AUDIT_GAP, None, "/x", {"lost": 3}),
]


@cache
def schemas() -> OcsfJsonSchemaEmbedded:
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=ocsf.VERSION))


def validate(event: dict[str, Any]) -> list[str]:
    name = schemas().lookup_class_name_from_uid(class_uid=event["class_uid"])
    schema = schemas().get_class_schema(class_name=name, profiles=[])
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(event)
    ]


def exported(audit_dir: Path, events: list[Event] = EVENTS) -> list[bytes]:
    with AuditLog(audit_dir) as log:
        for event in events:
            log.append(event)
    out = io.BytesIO()
    assert ocsf.export(audit_dir, out, ORIGIN) == len(events)
    return out.getvalue().splitlines(keepends=True)


def test_every_exported_event_is_valid_ocsf_for_its_class(audit_dir: Path) -> None:
    lines = exported(audit_dir)
    classes = set()
    for line in lines:
        event = json.loads(line)
        assert validate(event) == [], event["metadata"]["event_code"]
        classes.add(event["class_uid"])
        assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert classes == {0, 1001, 1007, 4001, 4002}


def test_the_mapping_says_what_happened(audit_dir: Path) -> None:
    events = {
        json.loads(line)["metadata"]["sequence"]: json.loads(line) for line in exported(audit_dir)
    }
    started, written, post, refused, blocked = (
        events[1],
        events[4],
        events[8],
        events[11],
        events[12],
    )
    assert (started["class_uid"], started["activity_id"]) == (1007, 1)
    assert started["process"] == {"uid": "s1", "name": "codex"}
    assert written["file"] == {
        "name": "main.py",
        "path": "/home/ana/src/app/main.py",
        "type_id": 1,
        "size": 812,
    }
    assert written["metadata"]["correlation_uid"] == "s1"
    assert post["http_request"]["http_method"] == "POST"
    assert post["http_request"]["url"]["path"] == "/v1/x"  # no query values, even redacted
    assert post["traffic"] == {"bytes_out": 120, "bytes_in": 4096}
    assert refused["status_detail"] == "not in the profile"
    assert blocked["severity_id"] == ocsf.HIGH
    assert events[16]["activity_name"] == "audit.gap"


def test_each_event_carries_its_record_byte_for_byte(audit_dir: Path) -> None:
    lines = exported(audit_dir)
    logged = [r for r in records(audit_dir) if isinstance(r, AuditRecord)]
    assert len(logged) == len(lines)
    on_disk = b"".join(p.read_bytes() for p in sorted(audit_dir.glob("*.jsonl"))).splitlines()
    for line, record, original in zip(lines, logged, on_disk, strict=True):
        event = json.loads(line)
        assert event["metadata"]["uid"] == record.hash
        assert ocsf.record_line(event) == record.line() == original


def test_an_ocsf_export_verifies(audit_dir: Path, tmp_path: Path) -> None:
    export = tmp_path / "audit.ocsf.jsonl"
    export.write_bytes(b"".join(exported(audit_dir)))
    assert ocsf.is_export(export)
    result = ocsf.verify(export)
    assert result.ok, result.problem
    assert result.records == len(EVENTS)


def _tamper(lines: list[bytes], index: int, change: Any) -> list[bytes]:
    event = json.loads(lines[index])
    change(event)
    return [*lines[:index], ocsf.dumps(event) + b"\n", *lines[index + 1 :]]


@pytest.mark.parametrize(
    ("index", "change", "reason"),
    [
        (3, lambda e: e["file"].update(path="/home/ana/elsewhere"), ocsf.EDITED),
        (7, lambda e: e["dst_endpoint"].update(hostname="harmless.example"), ocsf.EDITED),
        (10, lambda e: e.update(severity_id=1), ocsf.EDITED),
        (
            2,
            lambda e: e["unmapped"]["airlock"].update(
                record=e["unmapped"]["airlock"]["record"].replace("main.py", "main.pz")
            ),
            "edited: the record does not match its hash",
        ),
        (2, lambda e: e.pop("unmapped"), "not an Airlock OCSF event: no record under unmapped"),
    ],
)
def test_an_edited_export_is_caught_at_its_line(
    audit_dir: Path, tmp_path: Path, index: int, change: Any, reason: str
) -> None:
    export = tmp_path / "audit.ocsf.jsonl"
    export.write_bytes(b"".join(_tamper(exported(audit_dir), index, change)))
    result = ocsf.verify(export)
    assert result.problem is not None
    assert (result.problem.line, result.problem.reason) == (index + 1, reason)
    assert result.records == index


def test_a_dropped_event_breaks_the_chain(audit_dir: Path, tmp_path: Path) -> None:
    lines = exported(audit_dir)
    export = tmp_path / "audit.ocsf.jsonl"
    export.write_bytes(b"".join(lines[:5] + lines[6:]))
    result = ocsf.verify(export)
    assert result.problem is not None
    assert result.problem.reason == "record 6 is missing (dropped)"


def test_unknown_kinds_map_to_a_base_event(audit_dir: Path) -> None:
    with AuditLog(audit_dir) as log:
        record = log.append(Event(EventKind.SESSION_STARTED, "s2", "s2", {}))
    # A kind newer than the mapping (another version's log) still exports, as "Other".
    newer = dataclasses.replace(record, kind="sandbox.verified")
    event = ocsf.to_ocsf(newer, newer.line(), ORIGIN)
    assert (event["class_uid"], event["activity_id"]) == (0, 99)
    assert event["activity_name"] == "sandbox.verified"
    assert validate(event) == []
