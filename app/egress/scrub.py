"""Masks a route's credential in what the upstream sends back, so that an upstream that
echoes it (a debug endpoint, an error page) cannot hand it to the agent."""

from __future__ import annotations


class Scrubber:
    """Replaces a route's secret in the upstream's answer with asterisks of the same length
    (so Content-Length stays right), keeping `len(secret) - 1` bytes back between chunks so
    a secret split across two chunks is caught."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.active = len(secret) >= 4
        self._carry = b""

    def whole(self, value: bytes) -> bytes:
        return value.replace(self.secret, b"*" * len(self.secret)) if self.active else value

    def feed(self, data: bytes) -> bytes:
        data = self.whole(self._carry + data)
        cut = max(0, len(data) - (len(self.secret) - 1))
        self._carry = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        out, self._carry = self.whole(self._carry), b""
        return out
