"""WebSocket handshakes recognised and frames counted, by table."""

from __future__ import annotations

import pytest

from app.egress.websocket import FrameCounter, is_websocket_upgrade
from tests.app.egress.test_egress_routes import frame


@pytest.mark.parametrize(
    ("method", "headers", "upgrade"),
    [
        (b"GET", [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], True),
        (b"GET", [(b"Upgrade", b"WebSocket"), (b"Connection", b"keep-alive, Upgrade")], True),
        (b"GET", [(b"upgrade", b"h2c"), (b"connection", b"Upgrade")], False),
        (b"GET", [(b"upgrade", b"websocket")], False),  # Connection does not name it
        (b"POST", [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], False),
        (b"GET", [], False),
    ],
)
def test_what_is_a_websocket_handshake(
    method: bytes, headers: list[tuple[bytes, bytes]], upgrade: bool
) -> None:
    assert is_websocket_upgrade(method, headers) is upgrade


STREAM = (
    frame(b"")
    + frame(b"a" * 125, mask=None)
    + frame(b"b" * 126)
    + frame(b"c" * 65535)
    + frame(b"d" * 65536, mask=None)
    + frame(b"", opcode=8)
)


@pytest.mark.parametrize("piece", [1, 2, 7, 14, 1000, len(STREAM)])
def test_frames_are_counted_in_pieces_of_any_size(piece: int) -> None:
    counter = FrameCounter()
    counts = []
    for at in range(0, len(STREAM), piece):
        counter.feed(STREAM[at : at + piece])
        counts.append(counter.frames)
    assert counter.frames == 6
    assert counts == sorted(counts)


def test_the_counter_knows_when_the_bytes_end_between_frames() -> None:
    counter = FrameCounter()
    two = frame(b"hello") + frame(b"", opcode=9)
    ends = []
    for byte in two:
        counter.feed(bytes([byte]))
        ends.append(counter.between_frames)
    assert [i for i, end in enumerate(ends) if end] == [len(frame(b"hello")) - 1, len(two) - 1]
