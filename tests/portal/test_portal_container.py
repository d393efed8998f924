"""The portal end to end: gdbus inside a real agent container asks for files over the session's
private bus, the Supervisor delivers them mid-run, revocation takes them away, and nothing else
on the host — the user's own bus, another session's bus — is reachable from inside."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from app.consent import Answer, ConsentBroker, ConsentRequest, Verdict
from app.events import Event, EventBus, EventKind
from app.grants import Lifetime
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.review import Review
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import StateStore
from portal.extension import portal_extension
from tests.portal.rig import Scripted, allow, deny
from tests.support import profile_text

pytestmark = pytest.mark.docker

# The agent's side, in plain sh and gdbus: follow the portal's signals, call, wait, answer.
CLIENT = r"""
set -u
gdbus monitor --session --dest org.freedesktop.portal.Desktop >/tmp/monitor 2>&1 &
n=0
until grep -q 'is owned by' /tmp/monitor; do
  n=$((n+1)); [ $n -lt 400 ] || { echo "no portal on the bus"; cat /tmp/monitor; exit 3; }
  sleep 0.02
done
ask() {  # METHOD TOKEN TITLE EXTRA-OPTIONS
  gdbus call --session --dest org.freedesktop.portal.Desktop \
    --object-path /org/freedesktop/portal/desktop \
    --method org.freedesktop.portal.FileChooser.$1 "" "$3" "{'handle_token': <'$2'>${4:-}}" \
    || exit 4
  n=0
  until grep -q "/$2: org.freedesktop.portal.Request.Response" /tmp/monitor; do
    n=$((n+1)); [ $n -lt 1500 ] || { echo "no response"; exit 5; }
    sleep 0.02
  done
  line=$(grep "/$2: org.freedesktop.portal.Request.Response" /tmp/monitor)
  code=$(echo "$line" | sed -n 's/.*Response (uint32 \([0-9]*\),.*/\1/p')
  uri=$(echo "$line" | sed -n "s/.*'uris': <\['\([^']*\)'.*/\1/p")
  path=$(python3 -c 'import sys, urllib.parse as u
print(u.unquote(u.urlparse(sys.argv[1]).path))' "$uri")
  echo "response $2 $code $path"
}
"""


def sh(script: str) -> list[str]:
    return ["sh", "-c", CLIENT + script]


@pytest.fixture
def short_runtime() -> Iterator[Path]:
    """Socket paths must stay under 108 bytes, which pytest's temp dirs do not promise."""
    path = Path(tempfile.mkdtemp(prefix="alp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Rig:
    def __init__(
        self,
        tmp_path: Path,
        runtime: Path,
        engine: docker.DockerClient,
        decide: Callable[[ConsentRequest], Answer | None],
    ) -> None:
        self.dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=runtime)
        self.dirs.ensure()
        self.store = StateStore(self.dirs.database)
        self.events: list[Event] = []
        self.bus = EventBus()
        self.bus.attach(self.events.append)
        self.front_end = Scripted(decide)
        self.broker = ConsentBroker(self.bus, self.front_end)
        self.supervisor = Supervisor(
            engine,
            self.store,
            self.bus,
            self.dirs,
            ProfileCatalog(self.dirs.user_profiles),
            extensions=[portal_extension(self.broker)],
        )

    def request(self, image: str, command: list[str], timeout: float = 90) -> LaunchRequest:
        profile = parse_profile(profile_text(image, command), "test.toml")
        return LaunchRequest(profile, Path("test.toml"), (), timeout=timeout)

    def run(self, image: str, command: list[str]) -> tuple[SessionResult, Output]:
        output = Output()
        result = asyncio.run(self.supervisor.run(self.request(image, command), output))
        return result, output


class Output:
    def __init__(self) -> None:
        self.text = ""
        self.lines: asyncio.Queue[str] | None = None
        self._partial = ""

    def write(self, stream: str, data: bytes) -> None:
        text = data.decode(errors="replace")
        self.text += text
        if self.lines is not None:
            self._partial += text
            *complete, self._partial = self._partial.split("\n")
            for line in complete:
                self.lines.put_nowait(line)


@pytest.fixture
def rig_for(
    tmp_path: Path, short_runtime: Path, engine: docker.DockerClient
) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(decide: Callable[[ConsentRequest], Answer | None] = deny) -> Rig:
        made.append(Rig(tmp_path, short_runtime, engine, decide))
        return made[-1]

    yield make
    for rig in made:
        rig.store.close()


def responses(output: str) -> dict[str, tuple[int, str]]:
    found = {}
    for line in output.splitlines():
        if line.startswith("response "):
            _, token, code, path = [*line.split(" ", 3), ""][:4]
            found[token] = (int(code), path)
    return found


@pytest.mark.engines
def test_gdbus_opens_a_file_the_user_picked_and_reads_it(
    rig_for: Callable[..., Rig], agent_image: str, tmp_path: Path
) -> None:
    picked = tmp_path / "outside" / "the report.txt"
    picked.parent.mkdir()
    picked.write_text("QUARTERLY-FIGURES-42\n")
    picked.chmod(0o644)
    rig = rig_for(allow(picked))
    result, output = rig.run(
        agent_image,
        sh(
            'ask OpenFile t1 "Open the report, please"\n'
            'cat "$path"\n'
            'echo "$path" | grep -q "^/run/airlock/doc/" && echo in-documents\n'
        ),
    )
    assert result.exit_code == 0, output.text
    assert responses(output.text)["t1"][0] == 0
    assert "QUARTERLY-FIGURES-42" in output.text and "in-documents" in output.text
    (request,) = rig.front_end.seen
    assert request.reason == "Open the report, please" and request.session == result.session
    kinds = [e.kind for e in rig.events]
    assert EventKind.REQUEST_ASKED in kinds and EventKind.GRANT_ADDED in kinds


def test_a_denied_request_gives_nothing(rig_for: Callable[..., Rig], agent_image: str) -> None:
    rig = rig_for(deny)
    result, output = rig.run(
        agent_image, sh('ask OpenFile no "Give me your SSH key"\nls /run/airlock/doc\n')
    )
    assert result.exit_code == 0, output.text
    assert responses(output.text)["no"] == (1, "")
    assert not [e for e in rig.events if e.kind is EventKind.GRANT_ADDED]


@pytest.mark.engines
def test_gdbus_saves_through_staging_not_onto_the_host(
    rig_for: Callable[..., Rig], agent_image: str, tmp_path: Path
) -> None:
    target = tmp_path / "results" / "summary.md"
    target.parent.mkdir()
    rig = rig_for(allow(target))
    result, output = rig.run(
        agent_image,
        sh(
            "ask SaveFile s1 \"Save the summary\" \", 'current_name': <'summary.md'>\"\n"
            'echo "STAGED-SUMMARY" > "$path" && echo written "$path"\n'
        ),
    )
    assert result.exit_code == 0, output.text
    code, inside = responses(output.text)["s1"]
    assert code == 0 and inside.endswith("/summary.md") and "written" in output.text
    assert not target.exists()  # nothing reaches the host before review
    staged = list((rig.dirs.sessions / result.session).rglob("summary.md"))
    assert any(p.read_text() == "STAGED-SUMMARY\n" for p in staged), staged


@pytest.mark.engines
def test_revoke_removes_the_file_from_the_running_agent_at_once(
    rig_for: Callable[..., Rig], agent_image: str, tmp_path: Path
) -> None:
    picked = tmp_path / "granted.txt"
    picked.write_text("secret for a moment\n")
    picked.chmod(0o644)
    rig = rig_for(allow(picked))
    command = sh(
        'ask OpenFile r1 "Read it"\n'
        'echo "visible $path"\n'
        'while [ -e "$path" ]; do sleep 0.005; done\n'
        'echo "gone $(date +%s.%N)"\n'
    )

    async def scenario() -> tuple[float, float, str]:
        output = Output()
        output.lines = asyncio.Queue()
        run = asyncio.ensure_future(rig.supervisor.run(rig.request(agent_image, command), output))
        while True:
            line = await asyncio.wait_for(output.lines.get(), 60)
            if line.startswith("visible "):
                break
        grant = next(e.details["grant"] for e in rig.events if e.kind is EventKind.GRANT_ADDED)
        revoked_at = time.time()
        await rig.supervisor.arevoke([grant])
        while True:
            line = await asyncio.wait_for(output.lines.get(), 10)
            if line.startswith("gone "):
                gone_at = float(line.split()[1])
                break
        result = await asyncio.wait_for(run, 60)
        assert result.exit_code == 0, output.text
        return revoked_at, gone_at, output.text

    revoked_at, gone_at, text = asyncio.run(scenario())
    assert gone_at - revoked_at < 0.1, (gone_at - revoked_at, text)
    assert any(e.kind is EventKind.GRANT_REVOKED for e in rig.events)


@contextlib.contextmanager
def users_bus(directory: Path) -> Iterator[tuple[str, str]]:
    """A dbus-daemon standing for the desktop user's own session bus: on a path socket and
    an abstract one, with a name on it the agent must never see."""
    config = directory / "user-bus.conf"
    abstract = f"airlock-test-user-bus-{directory.name}"
    config.write_text(
        "<busconfig><type>session</type>"
        f"<listen>unix:path={directory}/user-bus</listen>"
        f"<listen>unix:abstract={abstract}</listen>"
        "<auth>EXTERNAL</auth><policy context='default'><allow user='*'/>"
        "<allow own='*'/><allow send_destination='*'/><allow receive_sender='*'/></policy>"
        "</busconfig>"
    )
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        assert address, "the user's bus did not start"
        # Show that the bus is really there and reachable from the host.
        probe = subprocess.run(
            [
                "gdbus",
                "call",
                "--address",
                f"unix:path={directory}/user-bus",
                "--dest",
                "org.freedesktop.DBus",
                "--object-path",
                "/org/freedesktop/DBus",
                "--method",
                "org.freedesktop.DBus.ListNames",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert probe.returncode == 0, probe.stderr
        yield f"unix:path={directory}/user-bus", f"unix:abstract={abstract}"
    finally:
        daemon.terminate()
        daemon.wait(5)


@pytest.mark.engines
def test_the_agent_reaches_neither_the_users_bus_nor_another_sessions(
    rig_for: Callable[..., Rig], agent_image: str, short_runtime: Path
) -> None:
    rig = rig_for(deny)
    with users_bus(short_runtime) as (user_path, user_abstract):

        async def scenario() -> tuple[str, str]:
            other_output = Output()
            other_output.lines = asyncio.Queue()
            other = asyncio.ensure_future(
                rig.supervisor.run(
                    rig.request(agent_image, ["sh", "-c", "echo up; sleep 60"]), other_output
                )
            )
            await asyncio.wait_for(other_output.lines.get(), 60)
            while not (
                started := [e.session for e in rig.events if e.kind is EventKind.SESSION_STARTED]
            ):
                await asyncio.sleep(0.05)
            other_id = started[0]
            other_socket = rig.dirs.runtime / str(other_id) / "bus" / "bus"
            assert other_socket.exists()
            probe = (
                'try() { if timeout 5 gdbus call --address "$1" --dest org.freedesktop.DBus '
                "--object-path /org/freedesktop/DBus --method org.freedesktop.DBus.ListNames "
                '>/dev/null 2>&1; then echo "REACHED $1"; else echo "refused $1"; fi; }\n'
                f'try "{user_path}"\n'
                f'try "{user_abstract}"\n'
                f'try "unix:path={other_socket}"\n'
                'try "unix:path=/run/dbus/system_bus_socket"\n'
                'try "$DBUS_SESSION_BUS_ADDRESS"\n'
                'ls -A /run/airlock/bus; echo "address $DBUS_SESSION_BUS_ADDRESS"\n'
                "gdbus call --session --dest org.freedesktop.DBus "
                "--object-path /org/freedesktop/DBus --method org.freedesktop.DBus.ListNames\n"
            )
            own = await rig.supervisor.run(
                rig.request(agent_image, ["sh", "-c", probe]), output := Output()
            )
            assert own.exit_code == 0, output.text
            await asyncio.to_thread(rig.supervisor.stop, str(other_id))
            await asyncio.wait_for(other, 60)
            return output.text, str(other_id)

        text, other_id = asyncio.run(scenario())
    assert "REACHED" not in text.replace("REACHED unix:path=/run/airlock/bus/bus", ""), text
    assert f"refused {user_path}" in text and f"refused {user_abstract}" in text
    assert "REACHED unix:path=/run/airlock/bus/bus" in text  # its own bus, and only that
    assert "address unix:path=/run/airlock/bus/bus" in text
    names = text[text.index("([") :]
    assert "org.freedesktop.portal.Desktop" in names
    assert "org.example" not in names and other_id not in names


def test_a_profile_rule_answers_a_save_into_its_folder_with_no_one_at_the_screen(
    rig_for: Callable[..., Rig], agent_image: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    rig = rig_for(deny)  # the person would say no: the rule must answer first
    rig.broker = ConsentBroker(rig.bus, rig.front_end, rules=rig.supervisor.rule_answer)
    rig.supervisor._extension_factories = (  # the same portal, with the rule-aware broker
        portal_extension(rig.broker),
    )
    profile = parse_profile(
        profile_text(
            agent_image,
            sh(
                f"ask SaveFile r1 \"Save\" \", 'current_folder': <b'{outbox}'>, "
                f"'current_name': <'out.txt'>\"\n"
                'echo RULED > "$path"\n'
                f"ask SaveFile r2 \"Save\" \", 'current_folder': <b'{tmp_path}'>, "
                f"'current_name': <'elsewhere.txt'>\"\n"
            ),
            extra=f'[approval]\nwrite = ["{outbox}"]',
        ),
        "rule.toml",
    )
    output = Output()
    result = asyncio.run(rig.supervisor.run(LaunchRequest(profile, Path("rule.toml")), output))
    got = responses(output.text)
    assert got["r1"][0] == 0 and got["r2"][0] == 1, output.text  # the second is not covered
    assert not (outbox / "out.txt").exists()  # still staged: a rule grants, it does not commit
    changes = Review(rig.dirs, rig.bus).changes(result.session)
    assert [c.path for c in changes.changes] == [outbox / "out.txt"]
    answered = [e for e in rig.events if e.kind is EventKind.REQUEST_ANSWERED]
    assert [(e.details["verdict"], e.details["by"] == "rule") for e in answered] == [
        ("allow", True),
        ("deny", False),
    ]


def test_a_save_folder_swapped_for_a_symlink_never_reaches_the_users_files(
    rig_for: Callable[..., Rig], agent_image: str, tmp_path: Path
) -> None:
    """The saves area is the agent's to write, so it can replace the folder of a save with
    a symlink to any of the user's folders. Listing, revoking, discarding and committing
    that save must then act on nothing of the user's."""
    outbox, victim = tmp_path / "outbox", tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    outbox.mkdir()
    (victim / "precious.txt").write_text("PRECIOUS USER DATA\n")
    (victim / "keep" / "inner.txt").write_text("kept\n")
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    targets = iter([outbox / "precious.txt", outbox / "keep"])
    rig = rig_for(
        lambda request: Answer(Verdict.ALLOW, Lifetime.ONCE, paths=(next(targets),), by="test")
    )
    command = sh(
        "ask SaveFile s1 \"Save\" \", 'current_name': <'precious.txt'>\"\n"
        "p1=$path\n"
        "ask SaveFile s2 \"Save\" \", 'current_name': <'keep'>\"\n"
        "p2=$path\n"
        'for p in "$p1" "$p2"; do d=$(dirname "$p"); rm -rf "$d" && '
        f'ln -s {victim} "$d" || exit 9; done\n'
        "echo SWAPPED; sleep 60\n"
    )

    async def scenario() -> str:
        output = Output()
        output.lines = asyncio.Queue()
        run = asyncio.ensure_future(rig.supervisor.run(rig.request(agent_image, command), output))
        while await asyncio.wait_for(output.lines.get(), 60) != "SWAPPED":
            pass
        session = rig.supervisor.last_session
        assert session is not None
        listed = Review(rig.dirs, rig.bus).changes(session)
        assert listed.changes == (), listed  # nothing of the victim's shows as the save
        grants = [e.details["grant"] for e in rig.events if e.kind is EventKind.GRANT_ADDED]
        assert len(grants) == 2
        await rig.supervisor.arevoke(grants)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        return session

    session = asyncio.run(scenario())
    review = Review(rig.dirs, rig.bus)
    review.commit(session)
    review.discard(session)
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before
    assert list(outbox.iterdir()) == []
