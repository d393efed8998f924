"""The audit log as OCSF events: every class Airlock emits validated against the OCSF 1.5
schema's models (ocsf-emitter, generated from the schema: required fields, enums, class and
category identity, type_uid), and the chain verified from the export."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from ocsf_emitter import _models as schema
from ocsf_emitter.validate import validate

from app.audit import AuditLog, lines, record_line, verify
from app.events import Event, EventKind
from app.ocsf import export_ocsf

MODELS: dict[int, Any] = {4002: schema.HttpActivity, 4001: schema.NetworkActivity,
                          1001: schema.FileActivity, 1007: schema.ProcessActivity,
                          3005: schema.UserAccess, 1008: schema.EventLogActvity}
# The Base Event (class 0) has no model there: its attributes are the ones every class
# requires, which Event Log Activity requires and nothing more.
BASE_REQUIRED = {name for name, field in schema.EventLogActvity.model_fields.items()
                 if field.is_required()}

EVENTS = [
    Event(EventKind.SESSION_STARTED, "s1", "s1", {"profile": "coder", "image": "i"}),
    Event(EventKind.NET_REQUEST, "s1", "api.test:443", {
        "method": "POST", "host": "api.test", "port": 443, "path": "/v1/chat?k=…",
        "status": 200, "bytes_up": 10, "bytes_down": 20, "decision": "allow", "route": "llm"}),
    Event(EventKind.NET_CREDENTIAL, "s1", "api.test:443", {
        "method": "POST", "host": "api.test", "port": 443, "path": "/v1/chat?k=…",
        "status": 200, "bytes_up": 10, "bytes_down": 20, "route": "llm",
        "route_header": "Authorization"}),
    Event(EventKind.NET_REFUSED, "s1", "files.test:80", {
        "method": "PATCH", "host": "files.test", "port": 80, "path": "/", "status": 403,
        "reason": "not approved", "held": True,
        "findings": [{"kind": "aws-access-key", "label": "x", "offset": 0}]}),
    Event(EventKind.NET_TUNNEL, "s1", "git.test:443", {"method": "CONNECT",
                                                       "bytes_up": 5, "bytes_down": 9}),
    Event(EventKind.NET_BLOCKED, "s1", "10.0.0.1:53", {"protocol": "udp"}),
    Event(EventKind.FILE_WRITTEN, "s1", "/home/u/notes.md", {"sha256": "ab"}),
    Event(EventKind.FILE_CREATED, "s1", "/home/u/new", {}),
    Event(EventKind.FILE_UNWATCHED, "s1", "/home/u", {}),
    Event(EventKind.GRANT_ADDED, "s1", "api.test:443", {
        "grant": "n-1", "network": True, "access": "connect", "lifetime": "always"}),
    Event(EventKind.GRANT_REVOKED, None, "/home/u/notes.md", {"grant": "g-1"}),
    Event(EventKind.REQUEST_ASKED, "s1", "api.test:443", {"asks": "network.host"}),
    Event(EventKind.CHANGES_COMMITTED, "s1", "s1", {"files": 2}),
    Event(EventKind.AUDIT_GAP, None, "/x", {"count": 3}),
    Event(EventKind.SESSION_EXITED, "s1", "s1", {"exit_code": 0, "reason": "done"}),
]


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    directory = tmp_path / "audit"
    with AuditLog(directory) as log:
        for event in EVENTS:
            log.append(event)
    out = io.BytesIO()
    assert export_ocsf(directory, out, hostname="desk", version="0.1.0") == (len(EVENTS), 0)
    path = tmp_path / "export.ocsf.jsonl"
    path.write_bytes(out.getvalue())
    return path, [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_event_is_valid_ocsf_of_its_class(
        exported: tuple[Path, list[dict[str, Any]]]) -> None:
    _, events = exported
    classes = [event["class_uid"] for event in events]
    assert classes == [1007, 4002, 4002, 4002, 4001, 4001, 1001, 1001, 1001, 3005, 3005, 0,
                       0, 1008, 1007]
    for event in events:
        model = MODELS.get(event["class_uid"])
        if model is None:
            assert event.keys() >= BASE_REQUIRED, event
            assert event["type_uid"] == event["activity_id"] == 99
            continue
        validate(model.model_validate(event))  # raises, naming the field, if not
    http = events[1]
    assert http["activity_id"] == 6 and http["type_uid"] == 400206  # Post
    assert http["http_request"]["url"]["path"] == "/v1/chat?k=…"
    assert events[3]["activity_id"] == 99 and events[3]["status_id"] == 2  # PATCH, refused
    assert events[3]["severity_id"] == 2
    assert events[0]["metadata"]["product"] == {"name": "Airlock", "vendor_name": "Airlock",
                                                 "version": "0.1.0"}
    assert [e["metadata"]["sequence"] for e in events] == list(range(1, len(EVENTS) + 1))


def test_the_chain_is_verified_from_the_export_and_an_edit_in_it_is_found(
        exported: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    path, events = exported
    result = verify(path)
    assert result.ok and result.records == len(EVENTS)
    carried = json.loads(events[6]["unmapped"]["airlock_record"])
    carried["subject"] = "/home/u/other.md"
    events[6]["unmapped"]["airlock_record"] = json.dumps(carried)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(e) + "\n" for e in events))
    broken = verify(edited)
    assert not broken.ok and broken.records == 6 and "hash" in broken.problem.reason  # type: ignore[union-attr]
    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("".join(json.dumps(e) + "\n" for i, e in enumerate(events) if i != 3))
    assert "missing" in verify(dropped).problem.reason  # type: ignore[union-attr]


def test_a_record_line_is_made_again_byte_for_byte(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    with AuditLog(directory) as log:
        for event in [*EVENTS, Event(EventKind.FILE_OPENED, "s1", "/bad/\udcff name", {
                "ratio": 0.1 + 0.2, "big": 10**20, "text": "ünïcode ✓"})]:
            log.append(event)
    for line, record in lines(directory):
        assert record_line(record) == line  # type: ignore[arg-type]
