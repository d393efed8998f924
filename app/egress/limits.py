"""Per-session limits of the egress proxy: a token bucket for bandwidth, a counter for
connections. Pure (the clock is passed in) so that they are tested without sleeping."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`rate` bytes per second, bursts of up to `burst` bytes. `delay` says how long the
    caller must wait before `amount` more bytes may pass, and books them."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    @classmethod
    def per_second(cls, rate: int) -> TokenBucket:
        # A quarter second of burst: smooth, but not one wake-up per read.
        return cls(float(rate), max(float(rate) / 4, 64 * 1024.0), max(float(rate) / 4, 1.0))

    def delay(self, amount: int, now: float) -> float:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(slots=True)
class ConnectionCounter:
    """Open upstream connections of one session, against the profile's maximum."""

    limit: int
    open: int = 0

    def acquire(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open = max(0, self.open - 1)
