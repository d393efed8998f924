"""`airlock run` hands its session to a running supervisor (`airlock daemon`), as it will to
the desktop app: same output, exit status and refusals; Ctrl-C ends the session; nobody
else may use the socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from app.container import LABEL_OWNER, LABEL_PROFILE, LABEL_ROLE, LABEL_SESSION
from tests.support import DesktopUser, containers, profile_text

pytestmark = pytest.mark.docker


@pytest.fixture
def daemon(tester: DesktopUser) -> Iterator[Path]:
    process = tester.popen("daemon")
    sock = Path(tester.env["XDG_RUNTIME_DIR"]) / "airlock" / "supervisor.sock"
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    assert sock.exists(), "the daemon never listened"
    yield sock
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert not sock.exists()


def test_run_is_handed_to_the_daemon(
    tester: DesktopUser, agent_image: str, daemon: Path, engine: docker.DockerClient
) -> None:
    tester.write("notes/a.md", "hello\n")
    path = tester.write(
        "agent.toml", profile_text(agent_image, ["sh", "-c", "cat a.md; echo err >&2; exit 5"])
    )
    result = tester.run("run", "--profile", str(path), "--grant", str(tester.base / "notes"))
    assert (result.returncode, result.stdout) == (5, "hello\n")
    assert "err" in result.stderr and "started" in result.stderr
    # The daemon, not the client, supervised it: its pid is the session's supervisor.
    record = json.loads(tester.run("sessions", "--all", "--json").stdout)[-1]
    assert record["exit_code"] == 5 and record["reason"] == "exited with status 5"
    supervisor_pid = int(record["supervisor"].split(":")[0])
    assert "daemon" in Path(f"/proc/{supervisor_pid}/cmdline").read_text()


def test_a_client_hears_its_own_sessions_notices(
    tester: DesktopUser, agent_image: str, daemon: Path
) -> None:
    # A grant is skipped before the session has started: the notice is still this client's.
    path = tester.write(
        "agent.toml",
        profile_text(agent_image, ["true"]) + '\n[[grants]]\npath = "/nonexistent-notes"\n',
    )
    result = tester.run("run", "--profile", str(path))
    assert result.returncode == 0, result.stderr
    assert "not granted: /nonexistent-notes" in result.stderr


def test_refusals_come_back_as_one_line(tester: DesktopUser, daemon: Path) -> None:
    result = tester.run("run", "--profile", "no-such-profile")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("airlock: no profile named 'no-such-profile'")
    assert len(result.stderr.strip().splitlines()) == 1
    bad = tester.run("run", "--profile", "notes-organizer", "--grant", "/nonexistent")
    assert "airlock: /nonexistent: no such file or directory" in bad.stderr


def test_interrupting_the_client_ends_the_session(
    tester: DesktopUser, agent_image: str, daemon: Path, engine: docker.DockerClient
) -> None:
    path = tester.write("long.toml", profile_text(agent_image, ["sleep", "300"]))
    client = tester.popen("run", "--profile", str(path))
    deadline = time.monotonic() + 60
    running: list[dict[str, object]] = []
    while not running and time.monotonic() < deadline:
        running = containers(
            engine,
            f"{LABEL_OWNER}={tester.uid}",
            f"{LABEL_PROFILE}=test-agent",
            f"{LABEL_ROLE}=agent",
            stopped=False,
        )
        time.sleep(0.1)
    assert running
    session = running[0]["Labels"][LABEL_SESSION]  # type: ignore[index]
    # Ctrl-C reaches the whole foreground group; here, the airlock client under runuser.
    children = Path(f"/proc/{client.pid}/task/{client.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGINT)
    client.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and containers(engine, f"{LABEL_SESSION}={session}"):
        time.sleep(0.1)
    assert containers(engine, f"{LABEL_SESSION}={session}") == []


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_an_agent_printing_faster_than_its_reader_is_held_up_not_buffered(
    tester: DesktopUser, agent_image: str, daemon: Path
) -> None:
    # The client's terminal stops reading (here: a pipe nobody reads). The agent must wait,
    # as it would on a terminal, and not fill the supervisor's memory with its output.
    (supervisor,) = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and entry.stat().st_uid == tester.uid
        and _command_line(entry).endswith(b"airlock\0daemon")
    ]
    path = tester.write(
        "flood.toml",
        profile_text(agent_image, ["sh", "-c", "head -c 2000000000 /dev/zero; echo done >&2"]),
    )
    before = resident_bytes(supervisor)
    client = tester.popen("run", "--profile", str(path))
    try:
        peak = before
        for _ in range(75):  # 15 s: at full speed, gigabytes would have come through
            time.sleep(0.2)
            peak = max(peak, resident_bytes(supervisor))
        assert peak - before < 150 * 1024**2, f"the supervisor grew by {peak - before} bytes"
        assert client.poll() is None  # still held up
    finally:
        tester.stop(client)


def _command_line(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes().rstrip(b"\0")
    except OSError:
        return b""


def test_another_user_cannot_use_the_supervisor(daemon: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon))  # root can reach it despite 0600; others cannot at all
        # The supervisor answers a stranger before reading anything and hangs up, so the
        # request may not even be taken: the refusal is what must arrive.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b'{"op": "run", "profile": "notes-organizer", "cwd": "/"}\n')
        frame = sock.recv(4096)
    assert frame[:1] == b"R" and b"not your supervisor" in frame


def test_a_running_supervisor_starts_the_next_sidecar_ahead(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient
) -> None:
    """The spare sidecar of a long-running supervisor serves the next session like its own:
    the witness reports that session's direct attempts, and nothing is left at exit."""
    process = tester.popen("daemon")
    sock = Path(tester.env["XDG_RUNTIME_DIR"]) / "airlock" / "supervisor.sock"
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    attempt = (
        'python3 -c "import socket; s = socket.socket(); s.settimeout(2)\n'
        "try: s.connect(('203.0.113.7', 443))\nexcept OSError as e: print('refused', e)\""
    )
    path = tester.write("probe.toml", profile_text(agent_image, ["sh", "-c", attempt]))
    owner = f"{LABEL_OWNER}={tester.uid}"
    try:
        sessions = []
        for _ in range(2):
            result = tester.run("run", "--profile", str(path))
            assert result.returncode == 0 and "refused" in result.stdout, result.stderr
            sessions.append(json.loads(tester.run("sessions", "--all", "--json").stdout)[-1])
        spares = containers(engine, owner, f"{LABEL_SESSION}=spare", stopped=False)
        assert len(spares) == 1  # the next one, ready
        for session in sessions:
            shown = tester.run("audit", "show", "--session", session["id"], "--json")
            blocked = [
                json.loads(line)
                for line in shown.stdout.splitlines()
                if json.loads(line)["kind"] == "net.blocked"
            ]
            assert [b["subject"] for b in blocked] == ["203.0.113.7:443"], shown.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert containers(engine, owner) == []


IDLE_CLIENTS = r"""
import json, socket, struct, sys, time

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.settimeout(30)
    return s

def refusal(s):
    data = b""
    while len(data) < 5 or len(data) < 5 + struct.unpack(">cI", data[:5])[1]:
        chunk = s.recv(65536)
        if not chunk:
            return None
        data += chunk
    return json.loads(data[5:])["error"]

bad = connect()
bad.sendall(b"[1, 2]\n")
print(json.dumps(refusal(bad)))
idle = [connect() for _ in range(40)]
time.sleep(1)
started = time.monotonic()
print(json.dumps(sorted(set(refusal(s) for s in idle))), round(time.monotonic() - started))
"""


def test_idle_or_malformed_hand_offs_are_turned_away_and_the_daemon_keeps_serving(
    tester: DesktopUser, agent_image: str, daemon: Path
) -> None:
    # Connections that never send their request would each hold a descriptor for good,
    # until the daemon could serve no one, its running sessions included.
    probe = subprocess.run(
        [*tester.prefix, sys.executable, "-c", IDLE_CLIENTS, str(daemon)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    first, second = probe.stdout.splitlines()
    assert json.loads(first) == "a request is a JSON object"
    answers, waited = second.rsplit(" ", 1)
    assert json.loads(answers) == ["no request within 10 s", "too many requests at once"]
    assert int(waited) <= 12
    path = tester.write("agent.toml", profile_text(agent_image, ["echo", "still serving"]))
    result = tester.run("run", "--profile", str(path))
    assert (result.returncode, result.stdout) == (0, "still serving\n"), result.stderr
