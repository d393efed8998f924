"""Masks a route's credential in what the upstream sends back, so that an upstream that
echoes it (a debug endpoint, an error page) cannot hand it to the agent."""

from __future__ import annotations


class Scrubber:
    """Replaces a route's secret in the upstream's answer with asterisks of the same length
    (so Content-Length stays right). Between chunks it keeps back only what could still
    become the secret — the longest tail of the chunk that is a beginning of the secret —
    so a secret split across two chunks is caught, and everything else (a streamed event
    ending in a blank line) goes to the agent at once."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.active = len(secret) >= 4
        self._carry = b""

    def whole(self, value: bytes) -> bytes:
        return value.replace(self.secret, b"*" * len(self.secret)) if self.active else value

    def feed(self, data: bytes) -> bytes:
        data = self.whole(self._carry + data)
        cut = _start_of_partial(data, self.secret)
        self._carry = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        out, self._carry = self.whole(self._carry), b""
        return out


def _start_of_partial(data: bytes, secret: bytes) -> int:
    """Where the longest tail of `data` that is a proper beginning of `secret` starts
    (len(data) if none). Only the last len(secret) - 1 bytes can hold one, and only from
    a byte equal to the secret's first."""
    first = secret[:1]
    at = data.find(first, max(0, len(data) - len(secret) + 1))
    while at != -1:
        if secret.startswith(data[at:]):
            return at
        at = data.find(first, at + 1)
    return len(data)
