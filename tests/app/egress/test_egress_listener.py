"""The hand-over of the proxy's port (app/egress/listener.py), with the witness's own sender
(`hand_over_listener` in profiles/agents/airlock_netlog.py) in a process of its own: the
listening socket arrives and serves, the sender keeps no copy, one hand-over per session,
and anything that is not exactly a listening socket on 127.0.0.1:PORT is refused with the
reason — every descriptor that came with it closed. In a real sidecar (its network
namespace, after the privilege drop, under the profile's seccomp filter) it carries every
proxy test of tests/ui/test_egress_escapes.py."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from app.egress.listener import MESSAGE, ListenerHandover, check_listener
from app.errors import EgressError
from tests.support import REPO

AGENTS = REPO / "profiles" / "agents"


def in_a_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def holding(sent: set[tuple[int, int]]) -> list[int]:
    """This process's descriptors of what was sent. By identity, not by a count of open
    descriptors: another test's socket closed by the garbage collector meanwhile, or a
    descriptor some library opens once, would change the count without any leak."""
    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if identity(int(name)) in sent:
                held.append(int(name))
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return held


async def receive(
    tmp_path: Path, port: int, send: Callable[[str], Awaitable[None]]
) -> ListenerHandover:
    handover = ListenerHandover(port)
    path = tmp_path / "listener.sock"
    await handover.start(path)
    await send(str(path))
    await asyncio.wait_for(handover.received.wait(), 10)
    return handover


async def witness_sends(path: str, port: int) -> int:
    """Runs the witness's sender in a process of its own; returns its pid."""
    code = (
        f"import sys; sys.path.insert(0, {str(AGENTS)!r}); import airlock_netlog; "
        f"airlock_netlog.hand_over_listener(('127.0.0.1', {port}), {path!r})"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-I", "-S", "-c", code)
    assert await process.wait() == 0
    return process.pid


@in_a_loop
async def test_the_witness_hands_over_a_port_that_then_serves_here(tmp_path: Path) -> None:
    port = free_port()
    pids: list[int] = []

    async def send(path: str) -> None:
        pids.append(await witness_sends(path, port))

    handover = await receive(tmp_path, port, send)
    assert handover.error is None and handover.sender == pids[0]
    assert not (tmp_path / "listener.sock").exists()  # one hand-over: the socket is gone
    listener = handover.take()
    server = await asyncio.start_server(
        lambda r, w: (w.write(b"served here\n"), w.close()), sock=listener
    )
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readline() == b"served here\n"
        writer.close()
    # The sender kept no copy: with ours closed, nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(EgressError, match="did not hand over"):
        handover.take()  # taken once
    await handover.close()


@in_a_loop
async def test_nobody_can_connect_after_the_hand_over(tmp_path: Path) -> None:
    port = free_port()

    async def send(path: str) -> None:
        await witness_sends(path, port)

    handover = await receive(tmp_path, port, send)
    with socket.socket(socket.AF_UNIX) as late, pytest.raises(FileNotFoundError):
        late.connect(str(tmp_path / "listener.sock"))
    await handover.close()


def tcp_listener(address: tuple[str, int]) -> socket.socket:
    return socket.create_server(address)


def not_listening(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.bind(address)
    return sock


def udp(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


def on_every_address(address: tuple[str, int]) -> socket.socket:
    return socket.create_server(("0.0.0.0", address[1]))


def ipv6(address: tuple[str, int]) -> socket.socket:
    return socket.create_server(("::1", address[1]), family=socket.AF_INET6)


def unix(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("")  # an autobound abstract name
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (not_listening, "not a listening socket"),
        (udp, "not a TCP/IPv4 socket"),
        (on_every_address, "bound to 0.0.0.0"),
        (ipv6, "not a TCP/IPv4 socket"),
        (unix, "not a TCP/IPv4 socket"),
    ],
)
@in_a_loop
async def test_a_socket_that_is_not_the_proxys_port_is_refused(
    tmp_path: Path, make: Callable[[tuple[str, int]], socket.socket], why: str
) -> None:
    port = free_port()
    sent: set[tuple[int, int]] = set()

    async def send(path: str) -> None:
        with make(("127.0.0.1", port)) as sock, socket.socket(socket.AF_UNIX) as channel:
            sent.add(identity(sock.fileno()))
            channel.connect(path)
            socket.send_fds(channel, [MESSAGE], [sock.fileno()])

    handover = await receive(tmp_path, port, send)
    assert handover.error is not None and why in handover.error
    with pytest.raises(EgressError, match=why):
        handover.take()
    await handover.close()
    assert sent and holding(sent) == []  # what came with it is closed


@in_a_loop
async def test_a_listener_on_another_port_is_refused(tmp_path: Path) -> None:
    port = free_port()

    async def send(path: str) -> None:
        with tcp_listener(("127.0.0.1", 0)) as sock, socket.socket(socket.AF_UNIX) as channel:
            channel.connect(path)
            socket.send_fds(channel, [MESSAGE], [sock.fileno()])

    handover = await receive(tmp_path, port, send)
    assert handover.error is not None and f"not 127.0.0.1:{port}" in handover.error


@pytest.mark.parametrize(
    "case", ["no descriptor", "two descriptors", "a file", "wrong message", "hang-up"]
)
@in_a_loop
async def test_a_malformed_hand_over_is_refused_and_leaks_nothing(
    tmp_path: Path, case: str
) -> None:
    port = free_port()
    sent: set[tuple[int, int]] = set()

    async def send(path: str) -> None:
        with (
            tcp_listener(("127.0.0.1", port)) as sock,
            open(__file__) as file,
            socket.socket(socket.AF_UNIX) as channel,
        ):
            sent.update((identity(sock.fileno()), identity(file.fileno())))
            channel.connect(path)
            if case == "no descriptor":
                channel.sendall(MESSAGE)
            elif case == "two descriptors":
                socket.send_fds(channel, [MESSAGE], [sock.fileno(), sock.fileno()])
            elif case == "a file":
                socket.send_fds(channel, [MESSAGE], [file.fileno()])
            elif case == "wrong message":
                socket.send_fds(channel, [b"GET / HTTP/1.1\r\n"], [sock.fileno()])

    handover = await receive(tmp_path, port, send)
    assert handover.error, case
    with pytest.raises(EgressError):
        handover.take()
    await handover.close()
    assert sent and holding(sent) == []


def test_check_listener_accepts_exactly_the_proxys_port() -> None:
    with tcp_listener(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        assert check_listener(sock, port) is None
        assert check_listener(sock, port + 1) is not None


@in_a_loop
async def test_closing_before_anything_came_is_clean(tmp_path: Path) -> None:
    handover = ListenerHandover(free_port())
    await handover.start(tmp_path / "listener.sock")
    await handover.close()
    assert not (tmp_path / "listener.sock").exists()
    with pytest.raises(EgressError, match="nothing received"):
        handover.take()


def test_the_sender_runs_on_the_images_python_without_site(tmp_path: Path) -> None:
    """The witness runs with -I -S in the sidecar: the sender needs nothing else."""
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {str(AGENTS)!r}); "
            "import airlock_netlog; print(airlock_netlog.HANDOVER_MESSAGE)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == repr(MESSAGE)
