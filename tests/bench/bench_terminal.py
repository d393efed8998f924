"""Benchmark: the terminal filter (ui/terminal.py) on a few MB of mixed and of plain output.

Run with `pytest tests/bench/bench_terminal.py -m bench -s`; it prints figures, asserts no
timing.
"""

from __future__ import annotations

import random
import time

import pytest

from ui.terminal import OutputFilter

pytestmark = pytest.mark.bench

PIECES = [
    b"plain ascii line of compiler output: warning: unused variable 'x'\n",
    "un texte accentué — with “quotes” and 日本語\n".encode(),
    b"\x1b[1;31merror\x1b[0m: \x1b[32mok\x1b[39m done\n",
    b"progress 42%\r",
    b"\x1b]8;;http://example/\x1b\\link\x1b]8;;\x1b\\\n",
    b"\x1b[2K\x1b[1A",
    b"\x1b[38;5;208morange\x1b[0m\n",
    b"\x1b[38;2;10;20;30mrgb\x1b[m\n",
]


def rate(data: bytes) -> float:
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    best = float("inf")
    for _ in range(3):
        filtered = OutputFilter()
        start = time.perf_counter()
        for chunk in chunks:
            filtered.feed(chunk)
        best = min(best, time.perf_counter() - start)
    return len(data) / best / 1e6


def test_filter_throughput() -> None:
    rng = random.Random(1)
    mixed = b"".join(rng.choice(PIECES) for _ in range(100_000))
    plain = b"".join(PIECES[i % 2] for i in range(60_000))
    print(
        f"\nterminal filter, 4 KiB chunks: mixed {len(mixed) / 1e6:.1f} MB "
        f"{rate(mixed):.0f} MB/s; plain text {len(plain) / 1e6:.1f} MB {rate(plain):.0f} MB/s"
    )
