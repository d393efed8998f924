"""The route credential's scrubber, by table: whole, split across chunks, and never held
longer than it must be."""

from __future__ import annotations

import pytest

from app.egress.scrub import Scrubber

KEY = b"sk-proj-" + b"Ab3" * 52  # 164 bytes, an OpenAI project key's shape
MASK = b"*" * len(KEY)


def scrubbed(chunks: list[bytes]) -> bytes:
    scrub = Scrubber(KEY)
    return b"".join(scrub.feed(c) for c in chunks) + scrub.flush()


@pytest.mark.parametrize("cut", [1, 2, 8, 80, 163])
def test_a_key_split_across_two_chunks_is_masked(cut: int) -> None:
    echoed = b"auth: " + KEY + b" end"
    at = len(b"auth: ") + cut
    assert scrubbed([echoed[:at], echoed[at:]]) == b"auth: " + MASK + b" end"


def test_a_key_in_one_byte_chunks_is_masked() -> None:
    echoed = b"x" + KEY + b"y" + KEY
    assert scrubbed([bytes([b]) for b in echoed]) == b"x" + MASK + b"y" + MASK


def test_a_short_secret_is_not_scrubbed_at_all() -> None:
    scrub = Scrubber(b"abc")
    assert not scrub.active and scrub.whole(b"abc") == b"abc"


@pytest.mark.parametrize(
    ("chunk", "now", "kept"),
    [
        (b'data: {"delta": "hi"}\n\n', b'data: {"delta": "hi"}\n\n', b""),
        (b"data: sk-pro", b"data: ", b"sk-pro"),  # could be the key's start: wait and see
        (b"data: sk-x", b"data: sk-x", b""),  # cannot
        (b"s", b"", b"s"),
        (b"ssk-proj-Ab3", b"s", b"sk-proj-Ab3"),
    ],
)
def test_only_what_could_start_the_key_is_kept_back(chunk: bytes, now: bytes, kept: bytes) -> None:
    scrub = Scrubber(KEY)
    assert scrub.feed(chunk) == now
    assert scrub.flush() == kept
