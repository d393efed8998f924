"""The bytes of a tunnel or a WebSocket on their way: the upload gate asks once past the
threshold, a refusal ends the relay, and the scrubber masks a route's key split across
frames."""

from __future__ import annotations

import pytest

from app.consent import Answer, RequestKind, Verdict
from app.egress.records import ExchangeRecord
from app.egress.requests import Kind, Target
from app.egress.scrub import Scrubber
from app.egress.steps import Refused
from app.egress.tunnels import TunnelUploads, WebSocketRelay
from app.egress.uploads import UploadGate

TARGET = Target(Kind.TUNNEL, "CONNECT", "files.test", 443, "")


def uploads(record: ExchangeRecord, threshold: int = 100) -> TunnelUploads:
    return TunnelUploads(UploadGate("ask", threshold), TARGET, record)


def test_a_tunnel_asks_once_its_bytes_pass_the_threshold_and_not_again() -> None:
    record = ExchangeRecord()
    gate = uploads(record)
    assert gate.question(60) is None
    gate.sent(60)
    ask = gate.question(60)
    assert ask is not None and ask.kind is RequestKind.UPLOAD
    assert ask.subject == "files.test:443"
    assert ask.details["size"] == 120 and ask.details["tunnel"] is True
    gate.answered(Answer(Verdict.ALLOW, by="dialog"), 60)
    gate.sent(60)
    assert record.held and record.decided_by == "user" and record.up == 120
    assert gate.question(10_000) is None  # approved: the rest goes


def test_a_refused_tunnel_upload_raises_with_its_size() -> None:
    record = ExchangeRecord()
    with pytest.raises(Refused) as refused:
        uploads(record).answered(Answer(Verdict.DENY, by="timeout"), 500)
    assert refused.value.status == 403 and refused.value.rule == "upload-refused"
    assert "500 bytes through the tunnel" in refused.value.reason
    assert record.decided_by == "timeout"


def test_a_websocket_question_names_its_path_without_the_query() -> None:
    record = ExchangeRecord(websocket=True)
    target = Target(Kind.FORWARD, "GET", "files.test", 80, "/live?token=abc")
    ask = TunnelUploads(UploadGate("always", 0), target, record).question(1)
    assert ask is not None and ask.details["websocket"] is True
    assert "abc" not in ask.details["path"]


def frame(payload: bytes) -> bytes:
    """An unmasked text frame from the server (payload under 126 bytes)."""
    return bytes([0x81, len(payload)]) + payload


def test_the_relay_counts_frames_and_masks_a_key_split_across_two_reads() -> None:
    record = ExchangeRecord(websocket=True)
    relay = WebSocketRelay(uploads(record), Scrubber(b"sk-secret"), record)
    data = frame(b"echo sk-secret!") + frame(b"next")
    out = relay.down(data[:9]) + relay.down(data[9:]) + relay.down_ended()
    assert b"sk-secret" not in out and out.count(b"*********") == 1
    assert len(out) == len(data)  # same length: frame headers stay right
    assert record.frames_down == 2 and record.down == len(data)
    relay.up(bytes([0x81, 0x82]) + b"\x00\x00\x00\x00hi")
    assert record.frames_up == 1
