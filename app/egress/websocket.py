"""WebSocket frames counted as they pass (RFC 6455 §5.2 framing): the proxy relays an
upgraded connection's bytes as they come and only counts the frames each way, holding
nothing back to do it."""

from __future__ import annotations

from app.egress.requests import Headers, header


def is_websocket_upgrade(method: bytes, headers: Headers) -> bool:
    """A GET asking to switch to the WebSocket protocol (other upgrades are not relayed:
    their Upgrade header is dropped as hop-by-hop, as before)."""
    if method != b"GET":
        return False
    tokens = {t.strip().lower() for t in b",".join(header(headers, b"upgrade")).split(b",")}
    connection = {t.strip().lower() for t in b",".join(header(headers, b"connection")).split(b",")}
    return b"websocket" in tokens and b"upgrade" in connection


class FrameCounter:
    """Counts the frames in a byte stream fed in pieces of any size: a frame is counted once
    its header is whole (a frame's payload may still be on its way)."""

    def __init__(self) -> None:
        self.frames = 0
        self._head = bytearray()
        self._left = 0  # payload bytes of the current frame still to come

    @property
    def between_frames(self) -> bool:
        """Whether the bytes fed so far end exactly where a frame ends."""
        return not self._left and not self._head

    def feed(self, data: bytes) -> None:
        at, end = 0, len(data)
        while at < end:
            if self._left:
                step = min(self._left, end - at)
                self._left -= step
                at += step
                continue
            self._head.append(data[at])
            at += 1
            size = _header_size(self._head)
            if size is not None and len(self._head) == size:
                self._left = _payload_length(self._head)
                self._head.clear()
                self.frames += 1


def _header_size(head: bytearray) -> int | None:
    if len(head) < 2:
        return None
    short = head[1] & 0x7F
    extended = 2 if short == 126 else 8 if short == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_length(head: bytearray) -> int:
    short = head[1] & 0x7F
    if short == 126:
        return int.from_bytes(head[2:4], "big")
    if short == 127:
        return int.from_bytes(head[2:10], "big")
    return short
