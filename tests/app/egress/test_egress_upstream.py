"""The upstream layer's pure parts: which responses may be spliced, and telling h11 about
bytes the kernel moved."""

from __future__ import annotations

import h11
import pytest

from app.egress.upstream import account, spliceable_length

LENGTH = [(b"content-length", b"5000000")]


@pytest.mark.parametrize(
    ("method", "status", "headers", "sent", "expected"),
    [
        (b"GET", 200, LENGTH, LENGTH, 5_000_000),
        (b"HEAD", 200, LENGTH, LENGTH, None),  # no body follows a HEAD's head
        (b"GET", 204, [], [], None),
        (b"GET", 304, LENGTH, LENGTH, None),
        (b"GET", 200, [(b"transfer-encoding", b"chunked")], [], None),  # h11 must de-chunk
        (b"GET", 200, [], [], None),  # read to the end: no length to hand the kernel
        (b"GET", 200, LENGTH, [(b"content-length", b"12")], None),  # the agent is told other
    ],
)
def test_only_a_body_of_a_length_sent_on_unchanged_is_spliced(
    method: bytes,
    status: int,
    headers: list[tuple[bytes, bytes]],
    sent: list[tuple[bytes, bytes]],
    expected: int | None,
) -> None:
    request = h11.Request(method=method, target="/", headers=[(b"host", b"x")])
    response = h11.Response(status_code=status, headers=headers)
    assert spliceable_length(request, response, sent) == expected


def test_accounted_bytes_finish_the_message_for_h11_and_keep_alive_goes_on() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    conn.next_event()  # EndOfMessage
    size = 3 * 1024 * 1024 + 7  # more than one block of zeros
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", str(size).encode())]))
    account(conn, size)
    assert conn.send(h11.EndOfMessage()) == b""
    assert conn.our_state is h11.DONE
    conn.start_next_cycle()  # the kept-alive connection takes the next request
