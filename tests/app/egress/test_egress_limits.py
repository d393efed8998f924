"""The proxy's per-session limits (app/egress/limits.py), by tables with the clock passed
in: the bandwidth bucket's waits and bursts, the connection counter's cap."""

from __future__ import annotations

import pytest

from app.egress.limits import ConnectionCounter, TokenBucket

RATE = 1024 * 1024  # bytes a second


def test_a_bucket_starts_with_a_quarter_second_and_fills_at_the_rate() -> None:
    bucket = TokenBucket.per_second(RATE)
    assert (bucket.rate, bucket.burst, bucket.tokens) == (RATE, RATE / 4, RATE / 4)


@pytest.mark.parametrize(
    ("steps", "delays"),
    [
        # (bytes, at second) -> how long the caller waits before they may pass
        ([(RATE // 4, 0.0)], [0.0]),  # the first quarter second passes at once
        ([(RATE // 4, 0.0), (RATE // 2, 0.0)], [0.0, 0.5]),  # then the rate
        ([(RATE // 4, 0.0), (RATE // 4, 0.25)], [0.0, 0.0]),  # refilled meanwhile
        ([(RATE // 4, 0.0), (RATE // 2, 0.5)], [0.0, 0.25]),  # but never past the burst
        ([(RATE // 4, 0.0), (RATE, 10.0)], [0.0, 0.75]),  # however long the pause
        ([(RATE, 0.0), (RATE, 0.0)], [0.75, 1.75]),  # what is booked, waits add up
    ],
)
def test_bucket_delays(steps: list[tuple[int, float]], delays: list[float]) -> None:
    bucket = TokenBucket.per_second(RATE)
    assert [pytest.approx(bucket.delay(amount, now)) for amount, now in steps] == delays


def test_a_slow_rate_starts_with_a_quarter_second_and_bursts_up_to_64_kib() -> None:
    bucket = TokenBucket.per_second(1024)
    assert bucket.burst == 64 * 1024
    assert bucket.delay(256, 0.0) == 0.0 and bucket.delay(1024, 0.0) == 1.0
    assert bucket.delay(64 * 1024, 1000.0) == 0.0  # after a pause, a burst passes at once


def test_the_connection_counter_caps_and_releases() -> None:
    counter = ConnectionCounter(2)
    assert [counter.acquire() for _ in range(3)] == [True, True, False]
    counter.release()
    assert counter.acquire()
    for _ in range(5):
        counter.release()
    assert counter.open == 0  # never below nothing
