"""A real session under gVisor (runsc from Debian, registered with the test engine as
`packaging/setup` does): one agent reads a read-only grant and fails to write it, writes a
read-write grant (the host file changes only at commit), reaches an allowed host through the
proxy and is refused another (checked at the servers), and asks the portal for a file with
Airlock's own client (`airlock-request`, dbus-fast over portal/relay.py). One container proves
all of it: a gVisor start is the slow part."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import docker
import pytest

from app.consent import Answer, ConsentBroker, ConsentRequest, Verdict
from app.egress.bridge import Egress
from app.egress.keys import KeyringSecrets
from app.events import Event, EventBus, EventKind
from app.grants import GrantRequest, Lifetime, Mode
from app.gvisor import NOTE, registration_fix, registration_problem
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.review import Review
from app.sessions import LaunchRequest, Supervisor
from app.store import StateStore
from portal.extension import portal_extension
from tests.netsupport import RecordingServer, StaticResolver
from tests.support import CollectedOutput, profile_text

pytestmark = pytest.mark.docker

IMAGE = "airlock-agent:claude-code"  # has airlock-request (Airlock's portal client)

AGENT = r"""
cat "$RO/facts.txt"
echo tampered > "$RO/facts.txt" 2>/dev/null && echo ro-write-succeeded || echo ro-write-refused
echo "changed by the agent" > "$RW/draft.txt" && echo rw-written
curl -sS -m 10 -o /dev/null -w "allowed:%{http_code}\n" "http://allowed.test:$A/ok" || true
curl -sS -m 10 -o /dev/null -w "denied:%{http_code}\n" "http://denied.test:$D/no" || true
airlock-request files --reason "the appendix, please" && echo portal-granted
cat /run/airlock/doc/*/appendix.txt
grep Seccomp /proc/self/status
"""


@pytest.fixture
def runsc(engine: docker.DockerClient) -> None:
    """runsc registered as Airlock needs it; missing, the test fails (nothing is skipped)."""
    why = registration_problem(engine.info().get("Runtimes", {}))
    if why is not None:
        pytest.fail(f"these tests need gVisor: {why}; {registration_fix()} (packaging/setup does)")


class Picker:
    """The front end: the file the agent asks for is picked, once, read-only."""

    def __init__(self, picked: Path) -> None:
        self.picked = picked
        self.seen: list[ConsentRequest] = []

    async def answer(self, request: ConsentRequest) -> Answer:
        self.seen.append(request)
        return Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(self.picked,), mode=Mode.READ, by="test")


def test_a_gvisor_session_reads_stages_reaches_only_the_proxy_and_asks_the_portal(
    engine: docker.DockerClient, runsc: None
) -> None:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"algv-{os.getpid()}"  # short socket paths
    shutil.rmtree(base, ignore_errors=True)
    try:
        run_and_check(engine, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_and_check(engine: docker.DockerClient, base: Path) -> None:
    dirs = Dirs(config=base / "c", state=base / "s", runtime=base / "r")
    dirs.ensure()
    ro, rw, outside = base / "ro", base / "rw", base / "outside"
    for folder in (ro, rw, outside):
        folder.mkdir()
        folder.chmod(0o755)
    (ro / "facts.txt").write_text("READ-ONLY-FACT-7\n")
    (rw / "draft.txt").write_text("the user's draft\n")
    (outside / "appendix.txt").write_text("APPENDIX-FROM-THE-PORTAL\n")
    for file in (ro / "facts.txt", rw / "draft.txt", outside / "appendix.txt"):
        file.chmod(0o644)
    # The agent runs as nobody here (the tests run as root): it may write the draft.
    (rw / "draft.txt").chmod(0o666)

    bus = EventBus()
    events: list[Event] = []
    bus.attach(events.append)
    picker = Picker(outside / "appendix.txt")
    broker = ConsentBroker(bus, picker)
    store = StateStore(dirs.database)
    with RecordingServer() as allowed, RecordingServer() as denied:
        egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=ConsentBroker(bus, _Refuse()),
            resolver=StaticResolver({"allowed.test": ["127.0.0.1"], "denied.test": ["127.0.0.1"]}),
        )
        supervisor = Supervisor(
            engine,
            store,
            bus,
            dirs,
            ProfileCatalog(dirs.user_profiles),
            extensions=[egress, portal_extension(broker)],
        )
        environment = (
            f'env = {{ RO = "{ro}", RW = "{rw}", A = "{allowed.port}", '
            f'D = "{denied.port}" }}\n'
            'runtime = "runsc"'
        )
        text = profile_text(IMAGE, ["sh", "-c", AGENT], extra=environment) + (
            f'[network]\nallow = ["allowed.test:{allowed.port}"]\nallow_private = true\n'
        )
        request = LaunchRequest(
            parse_profile(text, "t.toml"),
            Path("t.toml"),
            (GrantRequest(ro, Mode.READ), GrantRequest(rw, Mode.READ_WRITE)),
            timeout=90,
        )
        output = CollectedOutput()
        try:
            result = asyncio.run(supervisor.run(request, output))
        finally:
            store.close()
        text_out = output.text()
        assert result.exit_code == 0, text_out
        # The status says what differs under gVisor, and the profile's filter is in force.
        (verified,) = [e for e in events if e.kind is EventKind.SANDBOX_VERIFIED]
        assert verified.details["note"] == NOTE
        assert "Seccomp:\t2" in text_out
        # Read-only: read, and the write refused; the host file is as it was.
        assert "READ-ONLY-FACT-7" in text_out and "ro-write-refused" in text_out
        assert (ro / "facts.txt").read_text() == "READ-ONLY-FACT-7\n"
        # The proxy: the allowed server got the request, the refused one nothing at all.
        assert "allowed:200" in text_out and "denied:403" in text_out, text_out
        assert [r["path"] for r in allowed.seen.requests] == ["/ok"]
        assert denied.seen.connections == 0 and denied.seen.requests == []
        # The portal: asked, picked, delivered into the running agent.
        assert "portal-granted" in text_out and "APPENDIX-FROM-THE-PORTAL" in text_out
        assert [r.reason.startswith("the appendix, please") for r in picker.seen] == [True]
        # Read-write: staged; the host file changes only at commit.
        assert "rw-written" in text_out
        assert (rw / "draft.txt").read_text() == "the user's draft\n"
        review = Review(dirs, bus)
        assert [c.path for c in review.changes(result.session).changes] == [rw / "draft.txt"]
        review.commit(result.session)
        assert (rw / "draft.txt").read_text() == "changed by the agent\n"


class _Refuse:
    async def answer(self, request: ConsentRequest) -> Answer:
        return Answer(Verdict.DENY, by="test")
