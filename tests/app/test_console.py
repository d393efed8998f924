"""The agent's console: the engine's multiplexed stream read back into stdout and stderr,
the end of input delivered, and TERM passed through only as a terminal name."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from app.console import DEFAULT_TERM, Console, Terminal


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(payload)) + payload


@pytest.mark.parametrize(
    ("term", "colorterm", "expected"),
    [
        ("xterm-256color", "truecolor", {"TERM": "xterm-256color", "COLORTERM": "truecolor"}),
        ("screen.xterm+x", "", {"TERM": "screen.xterm+x"}),
        ("xterm\x1b]0;owned\x07", "24bit", {"TERM": DEFAULT_TERM, "COLORTERM": "24bit"}),
        ("a b", "x\ny", {"TERM": DEFAULT_TERM}),
        ("", "", {"TERM": DEFAULT_TERM}),
    ],
)
def test_term_is_passed_through_only_as_a_name(
    term: str, colorterm: str, expected: dict[str, str]
) -> None:
    assert Terminal(True, term=term, colorterm=colorterm).environment() == expected
    assert Terminal(False, term=term, colorterm=colorterm).environment() == {}


def test_the_multiplexed_stream_is_split_into_stdout_and_stderr() -> None:
    ours, engine_side = socket.socketpair()
    console = Console(ours, False, lambda rows, cols: None)
    big = b"x" * 200_000  # larger than one read: a frame arrives in pieces
    data = frame(1, b"out") + frame(2, b"err") + frame(1, big) + frame(3, b"?") + frame(2, b"e")

    def send() -> None:
        for at in range(0, len(data), 7001):
            engine_side.sendall(data[at : at + 7001])
        engine_side.close()

    threading.Thread(target=send).start()
    got = list(console.chunks())
    assert got == [(b"out", None), (None, b"err"), (big, None), (None, b"e")]


def test_a_terminal_stream_is_raw_and_input_ends_with_a_half_close() -> None:
    ours, engine_side = socket.socketpair()
    sizes: list[tuple[int, int]] = []
    console = Console(ours, True, lambda rows, cols: sizes.append((rows, cols)))
    console.write(b"typed\r")
    console.close_stdin()
    console.write(b"after the end")  # dropped, not an error
    assert engine_side.recv(100) == b"typed\r"
    assert engine_side.recv(100) == b""  # EOF: the engine closes the agent's stdin
    engine_side.sendall(b"\x1b[2Jscreen")
    engine_side.close()
    assert b"".join(out or b"" for out, _ in console.chunks()) == b"\x1b[2Jscreen"
    console.resize(40, 120)
    console.resize(0, 120)  # no size: not passed on
    assert sizes == [(40, 120)]
