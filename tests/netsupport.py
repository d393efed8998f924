"""Real network parts for the egress tests, all on loopback: upstream servers that record
every connection they get (plain and TLS), a TCP and a UDP listener that record anything at
all, a resolver with fixed answers, a consent front end with a scripted answer, a real
Secret Service, and the proxy running on its own loop thread on a TCP port, so that real
clients (curl, urllib) can use it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import keyring
import pytest
import trustme
from keyring.backends import SecretService as SecretServiceBackend

from app.consent import Answer, ConsentBroker, ConsentRequest, Verdict
from app.egress.inspect import GrantedContent
from app.egress.policy import IPAddress
from app.egress.proxy import ProxySettings, SessionProxy
from app.events import Event, EventBus
from app.profiles import Profile

CHUNK = 1024 * 1024
# Bodies whose every byte is checkable: a prime-length random block, repeated. A relay that
# drops, repeats or reorders any stretch of them changes their hash.
PATTERN = random.Random(7).randbytes(1_000_003)


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def pattern_pieces(size: int, piece: int) -> Iterator[memoryview]:
    """`pattern(size)` in pieces of `piece` bytes, made from one small block: building a
    256 MiB body at once holds the GIL for a third of a second, which the test process's
    event loops (the proxy under test) would wait out and be counted as blocked."""
    period = len(PATTERN)
    block = memoryview(PATTERN * (piece // period + 2))
    sent = 0
    while sent < size:
        length = min(piece, size - sent)
        offset = sent % period
        yield block[offset : offset + length]
        sent += length


@dataclass
class Seen:
    """What a recording server received."""

    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self, body: bytes) -> None:
        with self.server.seen.lock:
            self.server.seen.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        body = self._body()
        self._record(body)
        if self.path.startswith("/big/"):
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(CHUNK)
            left = size
            while left > 0:
                self.wfile.write(block[: min(left, CHUNK)])
                left -= CHUNK
            return
        if self.path.startswith(("/pattern/", "/cut/")):
            # /pattern/N: N checkable bytes; /cut/N: declares N, sends half, hangs up.
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            length = size if self.path.startswith("/pattern/") else size // 2
            for piece in pattern_pieces(length, CHUNK):
                self.wfile.write(piece)
            if self.path.startswith("/cut/"):
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if "/echo-auth" in self.path:
            payload = f"you sent: {self.headers.get('Authorization', '')}\n".encode()
        else:
            payload = json.dumps(
                {"path": self.path, "method": self.command, "size": len(body)}
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo-Auth", self.headers.get("Authorization", ""))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer


class RecordingServer(ThreadingHTTPServer):
    """An HTTP (or, with `tls`, HTTPS) server on 127.0.0.1:0 that records every connection
    it accepts and every request it reads."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen = Seen()
        self._tls = tls
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self.seen.lock:
            self.seen.connections += 1
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-way (refused uploads) are part of the tests

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class RecordingListener:
    """A raw TCP and UDP listener on 127.0.0.1 (one port number for both) that records
    anything that arrives: for attempts that must never get anywhere."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp.settimeout(0.1)
        self.udp.settimeout(0.1)
        self.hits: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                conn, peer = self.tcp.accept()
                self.hits.append(f"tcp {peer}")
                conn.close()
            with contextlib.suppress(OSError):
                _, peer = self.udp.recvfrom(65536)
                self.hits.append(f"udp {peer}")

    def __enter__(self) -> RecordingListener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.tcp.close()
        self.udp.close()


class RawServer:
    """A raw TCP server on 127.0.0.1:0 that hands each connection, one at a time, to
    `handle`, for what no HTTP server library would answer."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.handle(conn)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()


class EchoServer(RawServer):
    """Echoes what it gets and keeps all of it."""

    def __init__(self) -> None:
        super().__init__()
        self.received = bytearray()

    def handle(self, conn: socket.socket) -> None:
        while data := conn.recv(1024 * 1024):
            self.received += data
            conn.sendall(data)


class StaticResolver:
    """A resolver with fixed answers (tests cannot use real DNS). Names it does not know
    fail as unknown names do."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = {k: [ipaddress.ip_address(a) for a in v] for k, v in answers.items()}
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"unknown name {host}")
        return list(self.answers[host])


class ScriptedFrontEnd:
    """Answers every question with `verdict` (after `delay` seconds; None waits forever)
    and keeps the questions it got."""

    def __init__(self, verdict: Verdict = Verdict.ALLOW, delay: float | None = 0.0) -> None:
        self.verdict = verdict
        self.delay = delay
        self.asked: list[ConsentRequest] = []

    async def answer(self, request: ConsentRequest) -> Answer:
        self.asked.append(request)
        if self.delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay or 0)
        return Answer(self.verdict, by="test")


class FixedGranted:
    def __init__(self, content: GrantedContent) -> None:
        self.content = content

    async def current(self) -> GrantedContent:
        return self.content


class DictSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, name: str) -> str | None:
        return self.values.get(name)


class ProxyHarness:
    """A SessionProxy on its own loop thread, serving a listening socket on 127.0.0.1:0 the
    way it serves the one the sidecar hands over in a session."""

    def __init__(self, directory: Path, session: str, profile: Profile, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.attach(self.events.append)
        self.front_end: ScriptedFrontEnd | None = kwargs.pop("front_end", None)
        broker = ConsentBroker(self.bus, self.front_end) if self.front_end else None
        kwargs.setdefault("settings", ProxySettings())
        self.proxy = SessionProxy(session, profile, self.bus, broker=broker, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await self.proxy.start(listener)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ProxyHarness:
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def kinds(self) -> list[str]:
        return [str(e.kind) for e in self.events]

    def wait_events(self, count: int, timeout: float = 10) -> list[Event]:
        """Waits for `count` net.* events. Fewer by the timeout fails: a count that never
        comes would otherwise cost every run the whole timeout, silently."""
        deadline = time.monotonic() + timeout
        while len([e for e in self.events if e.kind.startswith("net.")]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"not {count} net events in {timeout} s: {self.kinds()}")
            time.sleep(0.02)
        return [e for e in self.events if e.kind.startswith("net.")]


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
    )


class SecretService:
    """A real Secret Service: a private session bus with gnome-keyring-daemon on it,
    unlocked with a throw-away password. `env` is what a client needs to reach it."""

    def __init__(
        self, home: Path, prefix: list[str] | None = None, owner: tuple[int, int] | None = None
    ) -> None:
        self.home = home
        self.prefix = prefix or []
        self.owner = owner
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env: dict[str, str] = {}

    def start(self, keyring: bool = True) -> SecretService:
        """`keyring=False`: the bus alone, gnome-keyring installed for D-Bus activation but
        not running (a text login's bus)."""
        for tool in ("dbus-daemon", "gnome-keyring-daemon"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is missing: `sudo packaging/setup test` installs it")
        runtime = self.home / "run"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.owner is not None:
            for path in (self.home, runtime):
                os.chown(path, *self.owner)
        base_env = {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(runtime),
            "XDG_DATA_HOME": str(self.home / "data"),
            "PATH": "/usr/bin:/bin",
        }
        bus = subprocess.Popen(
            [
                *self.prefix,
                "env",
                "-i",
                *(f"{k}={v}" for k, v in base_env.items()),
                "dbus-daemon",
                "--session",
                "--nofork",
                "--print-address=1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            pytest.fail("dbus-daemon did not start")
        self.env = dict(base_env, DBUS_SESSION_BUS_ADDRESS=address)
        if not keyring:
            return self
        keyring_daemon = subprocess.run(
            [
                *self.prefix,
                "env",
                "-i",
                *(f"{k}={v}" for k, v in self.env.items()),
                "gnome-keyring-daemon",
                "--unlock",
                "--components=secrets",
            ],
            input=b"airlock-test-password",
            capture_output=True,
            timeout=30,
        )
        if keyring_daemon.returncode != 0:
            pytest.fail(f"gnome-keyring-daemon failed: {keyring_daemon.stderr!r}")
        for line in keyring_daemon.stdout.decode().splitlines():
            if line.startswith("GNOME_KEYRING_CONTROL="):
                self.env["GNOME_KEYRING_CONTROL"] = line.partition("=")[2]
        return self

    def stop(self) -> None:
        # gnome-keyring-daemon daemonises and outlives its bus: find our instance by the
        # bus address it inherited, and end it by its pid.
        address = self.env.get("DBUS_SESSION_BUS_ADDRESS", "")
        wanted = f"DBUS_SESSION_BUS_ADDRESS={address}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() != "gnome-keyring-d":
                    continue
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), 15)
        for process in self.processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


def trusted_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def wait_until(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@contextlib.contextmanager
def servers(tls: ssl.SSLContext | None = None) -> Iterator[RecordingServer]:
    with RecordingServer(tls) as server:
        yield server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretService]:
    """gnome-keyring on a private bus; the keyring library in this process talks to it."""
    service = SecretService(tmp_path_factory.mktemp("keyring-home")).start()
    previous = keyring.get_keyring()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in service.env.items():
            if name != "PATH":
                patch.setenv(name, value)
        keyring.set_keyring(SecretServiceBackend.Keyring())
        try:
            yield service
        finally:
            keyring.set_keyring(previous)
            service.stop()
