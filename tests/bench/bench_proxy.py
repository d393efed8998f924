"""Benchmark of the egress proxy: 1 GiB download throughput and the p50 latency added to
small keep-alive requests, direct vs through Airlock's proxy vs through tinyproxy, all
measured in one run.

Airlock is measured on the agent's own path: the witness's `hand_over_listener` binds the
port in one process and hands it over, the proxy's process takes it with the supervisor's
`ListenerHandover` and serves it, as in a session (minus the network namespace, which costs
nothing on loopback). Every process is separate (upstream, proxy, tinyproxy, the measuring
client), as in real use, so no two share a GIL.
Run: .venv/bin/python -m pytest tests/bench/bench_proxy.py -m bench -s
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

GIB = 1024**3
SMALL_REQUESTS = 2000
DOWNLOADS = 5
AGENTS = str(Path(__file__).resolve().parents[2] / "profiles" / "agents")

UPSTREAM = textwrap.dedent("""
    import socket, sys, threading
    block = memoryview(bytes(1024 * 1024))
    def serve(conn):
        with conn:
            buf = b""
            while True:
                while b"\\r\\n\\r\\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\\r\\n\\r\\n")
                path = head.split(b" ")[1]
                size = int(path.rsplit(b"/", 1)[1]) if b"/big/" in path else 2
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % size)
                if size == 2:
                    conn.sendall(b"ok")
                    continue
                left = size
                while left:
                    n = min(left, len(block))
                    conn.sendall(block[:n])
                    left -= n
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
""")

PROXY = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from app.egress.listener import ListenerHandover
    from app.egress.proxy import ProxySettings, SessionProxy
    from app.events import EventBus
    from app.profiles import parse_profile
    profile = parse_profile(
        'name = "bench"\\nimage = "i"\\n[network]\\nallow = ["127.0.0.1:{port}"]\\n'
        '[approval]\\nuploads = "never"\\n', "bench.toml")
    class NoSecrets:
        def get(self, name): return None
    async def main():
        handover = ListenerHandover({listen})
        await handover.start(Path({socket!r}))
        print("ready", flush=True)
        await handover.received.wait()
        proxy = SessionProxy("bench", profile, EventBus(), secrets=NoSecrets(),
                             settings=ProxySettings(inspect_heads={inspect}))
        await proxy.start(handover.take())
        print("serving", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


@contextlib.contextmanager
def process(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User and system time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Reads one response; returns its body size. The head is parsed minimally: this is
    the measuring client, which only needs Content-Length."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            raise AssertionError("connection closed")
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    got = len(rest)
    view = memoryview(buffer)
    while got < length:
        n = sock.recv_into(view, min(len(buffer), length - got))
        if not n:
            raise AssertionError("body cut short")
        got += n
    return length


def request(upstream: int, path: str, via_proxy: bool, headers: str = "") -> bytes:
    target = f"http://127.0.0.1:{upstream}{path}" if via_proxy else path
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\n{headers}\r\n".encode()


def download(where: int, upstream: int, via_proxy: bool) -> float:
    buffer = bytearray(4 * 1024 * 1024)
    with connect(where) as sock:
        started = time.perf_counter()
        sock.sendall(request(upstream, f"/big/{GIB}", via_proxy))
        assert read_response(sock, buffer) == GIB
        return GIB / (time.perf_counter() - started)


def small_p50(
    where: int,
    upstream: int,
    via_proxy: bool,
    data: bytes | None = None,
    count: int = SMALL_REQUESTS,
) -> tuple[float, int]:
    """p50 of small requests on a kept-alive connection; a proxy that closes after each
    response (tinyproxy does) pays for its reconnects. Returns (p50, reconnects)."""
    buffer = bytearray(65536)
    data = data or request(upstream, "/small", via_proxy)
    times = []
    reconnects = 0
    sock = connect(where)
    try:
        for _ in range(count):
            started = time.perf_counter()
            try:
                sock.sendall(data)
                read_response(sock, buffer)
            except (AssertionError, OSError):
                sock.close()
                reconnects += 1
                sock = connect(where)
                sock.sendall(data)
                read_response(sock, buffer)
            times.append(time.perf_counter() - started)
    finally:
        sock.close()
    return statistics.median(times[100:]), reconnects  # the first ones warm up


def test_proxy_throughput_and_latency(tmp_path: Path) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    tinyproxy = shutil.which("tinyproxy")
    assert tinyproxy, "tinyproxy is missing (Debian: tinyproxy-bin)"
    with process([sys.executable, "-c", UPSTREAM]) as server:
        assert server.stdout is not None
        upstream = int(server.stdout.readline())
        sock_path = str(tmp_path / "listener.sock")
        tiny_port, airlock_port = free_port(), free_port()
        script = PROXY.format(
            repo=repo, port=upstream, socket=sock_path, listen=airlock_port, inspect=True
        )
        conf = tmp_path / "tinyproxy.conf"
        conf.write_text(
            f"Port {tiny_port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\n"
            "MaxClients 20\nLogLevel Critical\n"
        )
        with (
            process([sys.executable, "-c", script]) as proxy,
            process([tinyproxy, "-d", "-c", str(conf)]),
        ):
            assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
            hand_over = (
                f"import sys; sys.path.insert(0, {AGENTS!r}); import airlock_netlog; "
                f"airlock_netlog.hand_over_listener(('127.0.0.1', {airlock_port}), "
                f"{sock_path!r})"
            )
            subprocess.run([sys.executable, "-I", "-S", "-c", hand_over], check=True, timeout=30)
            assert proxy.stdout.readline().strip() == "serving"
            wait_port(tiny_port)
            paths: dict[str, tuple[int, bool]] = {
                "direct": (upstream, False),
                "airlock (agent's path)": (airlock_port, True),
                "tinyproxy": (tiny_port, True),
            }
            # Interleaved runs, medians: on a small machine one transfer's rate wanders.
            runs: dict[str, list[float]] = {name: [] for name in paths}
            # Where the CPU goes, per GiB: the upstream, the proxy in between, this client.
            cpu: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in paths}
            for _ in range(DOWNLOADS):
                for name, (where, via) in paths.items():
                    before = (cpu_seconds(server.pid), cpu_seconds(proxy.pid), time.process_time())
                    runs[name].append(download(where, upstream, via))
                    after = (cpu_seconds(server.pid), cpu_seconds(proxy.pid), time.process_time())
                    for i in range(3):
                        cpu[name][i] += (after[i] - before[i]) / DOWNLOADS
            rates = {name: statistics.median(values) for name, values in runs.items()}
            small = {name: small_p50(where, upstream, via) for name, (where, via) in paths.items()}
    p50 = {name: value for name, (value, _) in small.items()}
    direct_rate, direct_p50 = rates["direct"], p50["direct"]
    print(
        f"\n1 GiB download, median of {DOWNLOADS} interleaved runs; {SMALL_REQUESTS} small "
        "keep-alive requests, p50:"
    )
    for name in paths:
        print(
            f"  {name:<26} {rates[name] / 1e6:8.0f} MB/s  {rates[name] / direct_rate:5.2f}x "
            f"direct  {rates[name] / rates['tinyproxy']:5.2f}x tinyproxy   "
            f"p50 {p50[name] * 1e6:7.0f} µs  added {(p50[name] - direct_p50) * 1e6:6.0f} µs"
            f"  ({small[name][1]} reconnects)"
        )
    print(
        "CPU seconds per GiB (upstream + Airlock's proxy + client; a machine of "
        f"{os.cpu_count()} cores):"
    )
    for name in ("direct", "airlock (agent's path)"):
        upstream_cpu, proxy_cpu, client_cpu = cpu[name]
        print(
            f"  {name:<26} {upstream_cpu:.2f} + {proxy_cpu:.2f} + {client_cpu:.2f} = "
            f"{sum(cpu[name]):.2f}"
        )


# A small request as clients send them: a query, a user agent, an accept list, a cookie and
# a token-shaped header — every part inspected, in every reading, on each request.
HEADERS = (
    "User-Agent: python-requests/2.32.3\r\nAccept: application/json, text/plain, */*\r\n"
    "Accept-Encoding: gzip, deflate\r\n"
    "Cookie: session=Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0; theme=dark; lang=en-GB\r\n"
    "X-Request-Id: 4f6c1b0e9a8d4c2b8e7f6a5b4c3d2e1f\r\n"
)
HEAD_ROUNDS = 5


def test_head_inspection_cost(tmp_path: Path) -> None:
    """The small-request p50 through Airlock's proxy with request heads inspected against
    without, in one run: two proxy processes, the same upstream and client, interleaved
    rounds, the median of the rounds' p50s."""
    repo = str(Path(__file__).resolve().parents[2])
    with process([sys.executable, "-c", UPSTREAM]) as server:
        assert server.stdout is not None
        upstream = int(server.stdout.readline())
        ports: dict[str, int] = {}
        with contextlib.ExitStack() as stack:
            for name, inspect in (("heads inspected", True), ("heads not inspected", False)):
                sock_path = str(tmp_path / f"listener-{inspect}.sock")
                port = free_port()
                proxy = stack.enter_context(
                    process(
                        [
                            sys.executable,
                            "-c",
                            PROXY.format(
                                repo=repo,
                                port=upstream,
                                socket=sock_path,
                                listen=port,
                                inspect=inspect,
                            ),
                        ]
                    )
                )
                assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
                hand_over = (
                    f"import sys; sys.path.insert(0, {AGENTS!r}); "
                    "import airlock_netlog; airlock_netlog.hand_over_listener("
                    f"('127.0.0.1', {port}), {sock_path!r})"
                )
                subprocess.run(
                    [sys.executable, "-I", "-S", "-c", hand_over], check=True, timeout=30
                )
                assert proxy.stdout.readline().strip() == "serving"
                ports[name] = port
            data = request(upstream, "/api/v2/items?page=3&per_page=50&sort=updated", True, HEADERS)
            rounds: dict[str, list[float]] = {name: [] for name in ports}
            for _ in range(HEAD_ROUNDS):
                for name, port in ports.items():
                    rounds[name].append(small_p50(port, upstream, True, data, 1000)[0])
    p50 = {name: statistics.median(values) for name, values in rounds.items()}
    base = p50["heads not inspected"]
    print(
        f"\nsmall keep-alive requests with a {len(data)}-byte head, p50 (median of "
        f"{HEAD_ROUNDS} interleaved rounds of 1000):"
    )
    for name, value in p50.items():
        print(
            f"  {name:<22} p50 {value * 1e6:7.0f} µs  {value / base:5.2f}x  "
            f"added {(value - base) * 1e6:5.0f} µs"
        )


# HTTPS: interception vs an opaque tunnel vs direct.

TLS_BYTES = int(os.environ.get("AIRLOCK_BENCH_TLS_MIB", "1024")) * 1024**2
TLS_DOWNLOADS = 3
TLS_SMALL = int(os.environ.get("AIRLOCK_BENCH_TLS_SMALL", "1000"))
NEW_HOSTS = int(os.environ.get("AIRLOCK_BENCH_TLS_HOSTS", "200"))

TLS_UPSTREAM = UPSTREAM.replace(
    'server = socket.create_server(("127.0.0.1", 0))',
    "import ssl\n"
    "context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)\n"
    "context.load_cert_chain(sys.argv[1])\n"
    'plain = socket.create_server(("127.0.0.1", 0))\n'
    # Accepted sockets inherit it: the handshake, which accept() runs, is not delayed either.
    "plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "server = context.wrap_socket(plain, server_side=True)",
)

TLS_PROXY = textwrap.dedent("""
    import asyncio, ipaddress, socket, ssl, sys
    sys.path.insert(0, {repo!r})
    from app.egress.ca import SessionCA
    from app.egress.proxy import SessionProxy
    from app.events import EventBus
    from app.profiles import parse_profile
    profile = parse_profile(
        'name = "bench"\\nimage = "i"\\n[network]\\nallow_private = true\\n'
        'allow = [{{ host = "*.inspect.test", ports = [{port}], inspect = true }}, '
        '{{ host = "opaque.test", ports = [{port}] }}]\\n'
        '[approval]\\nuploads = "never"\\n', "bench.toml")
    class NoSecrets:
        def get(self, name): return None
    class Loopback:
        async def resolve(self, host, port): return [ipaddress.ip_address("127.0.0.1")]
    async def main():
        ca = SessionCA("bench")
        open({ca_path!r}, "wb").write(ca.certificate_pem)
        upstream_trust = ssl.create_default_context(cafile={test_ca!r})
        proxy = SessionProxy("bench", profile, EventBus(), secrets=NoSecrets(),
                             resolver=Loopback(), tls=upstream_trust, ca=ca)
        await proxy.start(socket.create_server(("127.0.0.1", {listen})))
        print("serving", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


def tls_connect(
    mode: str, proxy: int, upstream: int, host: str, contexts: dict[str, ssl.SSLContext]
) -> ssl.SSLSocket:
    """A TLS connection to the upstream as `host`: direct, or through a CONNECT."""
    sock = connect(upstream if mode == "direct" else proxy)
    if mode != "direct":
        sock.sendall(
            f"CONNECT {host}:{upstream} HTTP/1.1\r\nHost: {host}:{upstream}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(1)
        assert b" 200 " in answer, answer
    return contexts[mode].wrap_socket(sock, server_hostname=host)


def tls_request(host: str, upstream: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{upstream}\r\n\r\n".encode()


def test_https_interception_throughput_and_latency(tmp_path: Path) -> None:
    import trustme

    repo = str(Path(__file__).resolve().parents[2])
    test_ca = trustme.CA()
    cert = test_ca.issue_cert("*.inspect.test", "opaque.test", "direct.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "upstream.pem"))
    test_ca.cert_pem.write_to_path(str(tmp_path / "test-ca.pem"))
    session_ca = tmp_path / "session-ca.pem"
    with process([sys.executable, "-c", TLS_UPSTREAM, str(tmp_path / "upstream.pem")]) as server:
        assert server.stdout is not None
        upstream = int(server.stdout.readline())
        listen = free_port()
        script = TLS_PROXY.format(
            repo=repo,
            port=upstream,
            listen=listen,
            ca_path=str(session_ca),
            test_ca=str(tmp_path / "test-ca.pem"),
        )
        with process([sys.executable, "-c", script]) as proxy:
            assert proxy.stdout is not None and proxy.stdout.readline().strip() == "serving"
            upstream_trust = ssl.create_default_context(cafile=str(tmp_path / "test-ca.pem"))
            contexts = {
                "direct": upstream_trust,
                "opaque tunnel": upstream_trust,
                "inspected": ssl.create_default_context(cafile=str(session_ca)),
            }
            hosts = {
                "direct": "direct.test",
                "opaque tunnel": "opaque.test",
                "inspected": "api.inspect.test",
            }
            buffer = bytearray(4 * 1024 * 1024)
            runs: dict[str, list[float]] = {mode: [] for mode in contexts}
            cpu: dict[str, float] = dict.fromkeys(contexts, 0.0)
            for _ in range(TLS_DOWNLOADS):
                for mode in contexts:
                    before = cpu_seconds(proxy.pid)
                    with tls_connect(mode, listen, upstream, hosts[mode], contexts) as sock:
                        started = time.perf_counter()
                        sock.sendall(tls_request(hosts[mode], upstream, f"/big/{TLS_BYTES}"))
                        assert read_response(sock, buffer) == TLS_BYTES  # type: ignore[arg-type]
                        runs[mode].append(TLS_BYTES / (time.perf_counter() - started))
                    cpu[mode] += (cpu_seconds(proxy.pid) - before) / TLS_DOWNLOADS
            rates = {mode: statistics.median(values) for mode, values in runs.items()}
            kept: dict[str, float] = {}
            for mode in contexts:  # small requests on one kept-alive connection
                with tls_connect(mode, listen, upstream, hosts[mode], contexts) as sock:
                    times = []
                    for _ in range(TLS_SMALL):
                        started = time.perf_counter()
                        sock.sendall(tls_request(hosts[mode], upstream, "/small"))
                        read_response(sock, buffer)  # type: ignore[arg-type]
                        times.append(time.perf_counter() - started)
                kept[mode] = statistics.median(times[100:])
            fresh: dict[str, float] = {}
            # A new connection per request: CONNECT, both handshakes, the request. For
            # "inspected, new host" every request names a host not seen before, so each
            # pays for its leaf certificate's first generation.
            cases = [*contexts, "inspected, new host"]
            for case in cases:
                mode = "inspected" if case.startswith("inspected") else case
                times = []
                for i in range(NEW_HOSTS):
                    host = f"h{i}.inspect.test" if case == "inspected, new host" else hosts[mode]
                    started = time.perf_counter()
                    with tls_connect(mode, listen, upstream, host, contexts) as sock:
                        sock.sendall(tls_request(host, upstream, "/small"))
                        read_response(sock, buffer)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - started)
                fresh[case] = statistics.median(times)
    from app.egress.ca import SessionCA

    authority = SessionCA("bench")
    leaves = []
    for i in range(NEW_HOSTS):  # a leaf and its TLS context, on their own
        started = time.perf_counter()
        authority.server_context(f"leaf{i}.example")
        leaves.append(time.perf_counter() - started)
    mib = TLS_BYTES // 1024**2
    print(
        f"\nHTTPS: {mib} MiB download, median of {TLS_DOWNLOADS} interleaved runs "
        f"(proxy CPU s per download); p50 of {TLS_SMALL} small kept-alive requests:"
    )
    for mode in contexts:
        print(
            f"  {mode:<15} {rates[mode] / 1e6:7.0f} MB/s  {rates[mode] / rates['direct']:5.2f}x "
            f"direct  {rates[mode] / rates['opaque tunnel']:5.2f}x opaque   cpu {cpu[mode]:5.2f}"
            f"   p50 {kept[mode] * 1e6:6.0f} µs  added {(kept[mode] - kept['direct']) * 1e6:6.0f}"
            " µs"
        )
    print(f"p50 of {NEW_HOSTS} requests, each on a new connection (CONNECT + TLS + request):")
    for case in cases:
        print(
            f"  {case:<20} {fresh[case] * 1e3:6.2f} ms  added "
            f"{(fresh[case] - fresh['direct']) * 1e3:5.2f} ms  "
            f"{fresh[case] / fresh['direct']:5.2f}x direct"
        )
    print(
        f"a leaf certificate and its TLS context, made alone: p50 "
        f"{statistics.median(leaves) * 1e3:.2f} ms (in the proxy: once per host and "
        "session, ahead for the hosts a profile names exactly)"
    )
