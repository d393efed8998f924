"""Sessions against the real engine: lifecycle events, exit codes, limits, timeouts, clean-up."""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from app.audit import AuditProblem
from app.container import LABEL_SESSION
from app.errors import EngineError, ImageError, SessionError
from app.events import Event, EventBus, EventKind
from app.grants import GrantRequest, Lifetime, Mode
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import (
    OUTPUT_LINES_BURST,
    OUTPUT_LINES_PER_SECOND,
    LaunchRequest,
    SessionResult,
    Supervisor,
)
from app.staging import SessionStaging
from app.store import SessionState, StateStore
from tests.support import (
    CollectedOutput,
    DesktopUser,
    containers,
    profile_text,
    verified_outcome,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def supervisor(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Supervisor]:
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    store = StateStore(dirs.database)
    yield Supervisor(engine, store, EventBus(), dirs, ProfileCatalog(dirs.user_profiles))
    store.close()


def launch(
    supervisor: Supervisor,
    image: str,
    command: list[str],
    grants: tuple[GrantRequest, ...] = (),
    timeout: float | None = None,
    **profile: str | int,
) -> tuple[SessionResult, CollectedOutput, list[Event]]:
    events: list[Event] = []
    supervisor.bus.attach(events.append)
    text = profile_text(image, command, **profile)  # type: ignore[arg-type]
    request = LaunchRequest(
        parse_profile(text, "test.toml"), Path("test.toml"), grants, timeout=timeout
    )
    output = CollectedOutput()
    result = asyncio.run(supervisor.run(request, output))
    return result, output, events


def kinds(events: list[Event]) -> list[EventKind]:
    """The lifecycle: everything but output lines and file activity."""
    return [
        e.kind
        for e in events
        if e.kind is not EventKind.SESSION_OUTPUT and not e.kind.startswith("file.")
    ]


def no_container_left(engine: docker.DockerClient, session: str) -> bool:
    return not containers(engine, f"{LABEL_SESSION}={session}")


@pytest.mark.engines
def test_lifecycle_exit_code_output_and_clean_up(
    supervisor: Supervisor, agent_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("hello from the host\n")
    grant = GrantRequest(notes, Mode.READ)
    result, output, events = launch(
        supervisor,
        agent_image,
        ["sh", "-c", "pwd; cat a.md; echo oops >&2; exit 7"],
        (grant,),
    )
    assert result.exit_code == 7
    assert result.reason == "exited with status 7"
    assert output.text("stdout") == f"{notes}\nhello from the host\n"
    assert output.text("stderr") == "oops\n"
    assert kinds(events) == [
        EventKind.GRANT_ADDED,
        EventKind.SANDBOX_VERIFIED,
        EventKind.SESSION_STARTED,
        EventKind.SESSION_EXITED,
    ]
    lines = [(e.subject, e.details["text"]) for e in events if e.kind is EventKind.SESSION_OUTPUT]
    assert ("stdout", "hello from the host") in lines and ("stderr", "oops") in lines
    assert all(e.session == result.session for e in events)
    assert no_container_left(engine, result.session)
    assert not (supervisor.dirs.sessions / result.session / "view").exists()
    record = supervisor.store.session(result.session)
    assert record is not None and record.state is SessionState.EXITED and record.exit_code == 7
    assert record.sandbox is not None and record.sandbox.startswith(verified_outcome())
    assert supervisor.store.session_grants(result.session, time.time()) == []


def test_output_at_full_speed_is_summed_up_not_recorded_line_by_line(
    supervisor: Supervisor, agent_image: str
) -> None:
    # 300 000 lines in well under a second: each would be an event and an audit record.
    # The output itself is whole; the events stop at the budget and count the rest.
    started = time.monotonic()
    result, output, events = launch(supervisor, agent_image, ["seq", "300000"])
    seconds = time.monotonic() - started
    assert result.exit_code == 0
    assert output.text("stdout") == "".join(f"{i}\n" for i in range(1, 300001))
    shown = [e for e in events if e.kind is EventKind.SESSION_OUTPUT]
    one_by_one = [e for e in shown if "lines" not in e.details]
    summed = [e for e in shown if "lines" in e.details]
    assert len(one_by_one) <= OUTPUT_LINES_BURST + OUTPUT_LINES_PER_SECOND * seconds + 1
    assert summed and len(one_by_one) + sum(e.details["lines"] for e in summed) == 300000
    assert one_by_one[0].details["text"] == "1"
    assert "not recorded one by one" in summed[0].details["text"]


def test_when_the_audit_log_cannot_be_written_sessions_stop_and_none_starts(
    engine: docker.DockerClient, agent_image: str, tmp_path: Path
) -> None:
    """Nothing runs unrecorded. The audit log lives on a small real tmpfs here: the first
    2 000 output lines of an agent become records at once, more than fit."""
    from app.audit import AuditLog, Recorder, records, verify

    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    dirs.audit.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "airlock-test", str(dirs.audit)],
        check=True,
    )
    store = StateStore(dirs.database)
    audit = AuditLog(dirs.audit)
    try:
        recorder = Recorder(audit)
        bus = EventBus()
        bus.attach(recorder)
        supervisor = Supervisor(
            engine, store, bus, dirs, ProfileCatalog(dirs.user_profiles), recorder=recorder
        )
        result, output, _ = launch(supervisor, agent_image, ["sh", "-c", "seq 5000; sleep 100"])
        assert result.reason.startswith(
            "stopped: the audit log cannot be written (cannot write to"
        ), result.reason
        assert output.text("stdout").startswith("1\n2\n")
        assert no_container_left(engine, result.session)
        with pytest.raises(
            SessionError,
            match=r"^the audit log cannot be written \(.*\): no "
            r"session runs unrecorded; free space there and start it again$",
        ):
            launch(supervisor, agent_image, ["echo", "unrecorded"])

        subprocess.run(["mount", "-o", "remount,size=16m", str(dirs.audit)], check=True)
        result, output, _ = launch(supervisor, agent_image, ["echo", "recorded"])
        assert (result.exit_code, output.text("stdout")) == (0, "recorded\n")
    finally:
        audit.close()
        store.close()
        copy = tmp_path / "audit-copy"
        shutil.copytree(dirs.audit, copy)
        subprocess.run(["umount", str(dirs.audit)], check=True)
    assert verify(copy).problem is None
    kept = [r for r in records(copy) if not isinstance(r, AuditProblem)]
    [gap] = [r for r in kept if r.kind == "audit.gap"]
    assert gap.details["lost"] > 0 and "cannot write to" in gap.details["reason"]
    assert kept[-1].kind == "session.exited" and kept[-1].details["code"] == 0


def test_a_session_filling_the_disk_is_stopped_and_none_starts_until_there_is_room(
    engine: docker.DockerClient, agent_image: str, tmp_path: Path
) -> None:
    """What an agent stages has no quota of its own (the saves area, an overlay's upper
    layer): the disk it is on is a small real tmpfs here, and the agent fills it."""
    from app.review import Review

    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    dirs.ensure()
    dirs.sessions.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "airlock-test", str(dirs.sessions)], check=True
    )
    store = StateStore(dirs.database)
    try:
        supervisor = Supervisor(
            engine,
            store,
            EventBus(),
            dirs,
            ProfileCatalog(dirs.user_profiles),
            disk_reserve=32 * 1024**2,
        )
        filler = "dd if=/dev/zero of=/run/airlock/save/junk bs=1M count=90; sleep 100"
        result, _, _ = launch(supervisor, agent_image, ["sh", "-c", filler])
        assert result.reason.startswith("stopped: only "), result.reason
        assert f"MiB left on the disk of {dirs.sessions}" in result.reason
        assert no_container_left(engine, result.session)
        with pytest.raises(
            SessionError,
            match=r"^only \d+ MiB left on the disk of .* \(at "
            r"least 32 MiB must stay free\); free space there and start it again$",
        ):
            launch(supervisor, agent_image, ["true"])
        Review(dirs, supervisor.bus).discard(result.session)  # what it left goes too
        result, output, _ = launch(supervisor, agent_image, ["echo", "room again"])
        assert (result.exit_code, output.text()) == (0, "room again\n")
    finally:
        store.close()
        subprocess.run(["umount", str(dirs.sessions)], check=True)


def test_file_activity_and_audit_name_the_host_path(
    supervisor: Supervisor, agent_image: str, tmp_path: Path
) -> None:
    from app.audit import AuditLog, records

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "read-me.md").write_text("CANARY-CONTENT-7f3a\n")
    (notes / "untouched.md").write_text("x\n")
    audit = AuditLog(supervisor.dirs.audit)
    supervisor.bus.attach(audit.sink)
    try:
        result, _, events = launch(
            supervisor,
            agent_image,
            ["sh", "-c", "cat read-me.md >/dev/null; sleep 0.5"],
            (GrantRequest(notes, Mode.READ),),
        )
    finally:
        audit.close()
    opened = {(e.kind, e.subject) for e in events if e.kind.value.startswith("file.")}
    assert (EventKind.FILE_OPENED, str(notes / "read-me.md")) in opened
    assert (EventKind.FILE_READ, str(notes / "read-me.md")) in opened
    assert not any(subject.endswith("untouched.md") for _, subject in opened)
    logged = [r for r in records(supervisor.dirs.audit) if r.session == result.session]
    assert any(r.kind == "file.read" and r.subject == str(notes / "read-me.md") for r in logged)
    raw = b"".join(p.read_bytes() for p in supervisor.dirs.audit.glob("*.jsonl"))
    assert b"CANARY-CONTENT-7f3a" not in raw


@pytest.mark.engines
def test_timeout_stops_the_agent(
    supervisor: Supervisor, agent_image: str, engine: docker.DockerClient
) -> None:
    started = time.monotonic()
    result, _, events = launch(supervisor, agent_image, ["sleep", "60"], timeout=1.0)
    assert time.monotonic() - started < 30
    assert (result.exit_code, result.reason) == (124, "timed out")
    assert EventKind.SESSION_TIMEOUT in kinds(events)
    assert no_container_left(engine, result.session)


def test_memory_limit_kills_the_agent(supervisor: Supervisor, agent_image: str) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(16 * 1024 * 1024))"
    result, _, events = launch(supervisor, agent_image, ["python3", "-c", hog], memory="64m")
    assert result.reason == "killed: out of memory"
    assert result.exit_code == 137
    assert EventKind.SESSION_OOM in kinds(events)


def test_pids_limit_holds_and_is_reported(supervisor: Supervisor, agent_image: str) -> None:
    bomb = (
        "import os, time\n"
        "children = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30); os._exit(0)\n"
        "    children += 1\n"
        "print('children', children, flush=True)\n"
        "time.sleep(1.5)\n"
    )
    _, output, events = launch(
        supervisor, agent_image, ["python3", "-c", bomb], pids=16, timeout=60
    )
    children = int(output.text("stdout").split()[1])
    assert children < 16  # init, the agent and its children all count against the limit
    limits = [e for e in events if e.kind is EventKind.SESSION_LIMIT]
    assert limits and limits[0].subject == "pids"


@pytest.mark.engines
def test_cancel_removes_the_container(
    supervisor: Supervisor, agent_image: str, engine: docker.DockerClient
) -> None:
    text = profile_text(agent_image, ["sleep", "60"])
    request = LaunchRequest(parse_profile(text, "t.toml"), Path("t.toml"))
    started: list[str] = []
    supervisor.bus.attach(
        lambda e: started.append(e.session or "") if e.kind is EventKind.SESSION_STARTED else None
    )

    async def run_and_cancel() -> None:
        task = asyncio.create_task(supervisor.run(request, CollectedOutput()))
        while not started:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_and_cancel())
    assert no_container_left(engine, started[0])
    record = supervisor.store.session(started[0])
    assert record is not None and record.reason == "interrupted"


def test_pinned_digest_mismatch_is_refused(supervisor: Supervisor, agent_image: str) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ImageError, match="not the pinned sha256:0000"):
        launch(supervisor, agent_image, ["true"], extra=f'image_digest = "{wrong}"')
    right = supervisor.engine.images.get(agent_image).id
    result, _, _ = launch(supervisor, agent_image, ["true"], extra=f'image_digest = "{right}"')
    assert result.exit_code == 0


def test_missing_runtime_is_named(supervisor: Supervisor, agent_image: str) -> None:
    # (runsc is registered with the test engine: tests/ui/test_gvisor_session.py)
    with pytest.raises(EngineError, match="runtime 'kata', which the engine does not have"):
        launch(supervisor, agent_image, ["true"], extra='runtime = "kata"')


def test_missing_image_says_how_to_build_it(supervisor: Supervisor) -> None:
    with pytest.raises(ImageError, match="airlock image build"):
        launch(supervisor, "airlock-no-such-image:1", ["true"])


def test_crashed_supervisor_is_swept_at_next_start(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient
) -> None:
    profile = tester.write("agent.toml", profile_text(agent_image, ["sleep", "300"]))
    process = tester.popen("run", "--profile", str(profile))
    try:
        session, supervisor_pid = wait_for_session(tester, process)
        # SIGKILL the supervising `airlock run`: no clean-up code runs, as in a crash.
        os.kill(supervisor_pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert not no_container_left(engine, session)
        listing = tester.run("sessions", "--json")
        assert listing.returncode == 0, listing.stderr
        assert json.loads(listing.stdout) == []
        assert no_container_left(engine, session)
        view = tester.base / ".state" / "airlock" / "sessions" / session / "view"
        assert not view.exists()
    finally:
        process.kill()


def wait_for_session(
    tester: DesktopUser, process: subprocess.Popen[str], timeout: float = 60
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"airlock run ended early: {process.communicate()}")
        result = tester.run("sessions", "--json")
        sessions = json.loads(result.stdout or "[]")
        running = [s for s in sessions if s["state"] == "running"]
        if running:
            return str(running[0]["id"]), int(running[0]["supervisor"].split(":")[0])
        time.sleep(0.2)
    raise AssertionError("no session started")


@pytest.mark.engines
def test_files_granted_mid_run_appear_and_revoke_removes_them(
    supervisor: Supervisor, agent_image: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("anchored\n")
    (tmp_path / "elsewhere.txt").write_text("documents area\n")
    script = (
        "import glob, os, sys, time\n"
        "def wait(pattern, present):\n"
        "    for _ in range(400):\n"
        "        if bool(glob.glob(pattern)) == present: return True\n"
        "        time.sleep(0.025)\n"
        "    return False\n"
        f"assert wait('{notes}/b.md', True)\n"
        "print(open(glob.glob('" + str(notes) + "/b.md')[0]).read().strip(), flush=True)\n"
        "assert wait('/run/airlock/doc/*/elsewhere.txt', True)\n"
        "print(open(glob.glob('/run/airlock/doc/*/elsewhere.txt')[0]).read().strip(), flush=True)\n"
        "assert wait('/run/airlock/doc/*/elsewhere.txt', False)\n"
        "print('revoked', flush=True)\n"
    )
    text = profile_text(agent_image, ["python3", "-c", script])
    request = LaunchRequest(
        parse_profile(text, "t.toml"), Path("t.toml"), (GrantRequest(notes / "a.md", Mode.READ),)
    )
    output = CollectedOutput()

    async def scenario() -> SessionResult:
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        supervisor.bus.attach(
            lambda e: (
                started.set_result(e.session or "") if e.kind is EventKind.SESSION_STARTED else None
            )
        )
        run = asyncio.create_task(supervisor.run(request, output))
        session = await started
        (notes / "b.md").write_text("same path\n")
        inside = await supervisor.files.open_files(
            session, [notes / "b.md"], Mode.READ, Lifetime.SESSION
        )
        assert [str(p) for p in inside] == [str(notes / "b.md")]
        (elsewhere,) = await supervisor.files.open_files(
            session, [tmp_path / "elsewhere.txt"], Mode.READ, Lifetime.ONCE
        )
        assert str(elsewhere).startswith("/run/airlock/doc/")
        await asyncio.sleep(0.3)
        grants = supervisor.store.session_grants(session, time.time())
        doc_grant = next(g for g in grants if g.path.name == "elsewhere.txt")
        await supervisor.arevoke([doc_grant.id])
        return await run

    result = asyncio.run(scenario())
    assert output.text("stdout").splitlines() == ["same path", "documents area", "revoked"], (
        output.text("stderr")
    )
    assert result.exit_code == 0
    assert (tmp_path / "elsewhere.txt").read_text() == "documents area\n"


def staging_of(supervisor: Supervisor, session: str) -> SessionStaging:
    return SessionStaging(supervisor.dirs.sessions / session / "staging", session)


def _run_then_revoke(
    supervisor: Supervisor,
    request: LaunchRequest,
    output: CollectedOutput,
    before_revoke: Callable[[str], Awaitable[None]],
) -> SessionResult:
    """Runs `request`; once the agent printed "ready", `before_revoke(session)`, then
    revokes every grant of the session."""

    async def scenario() -> SessionResult:
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        supervisor.bus.attach(
            lambda e: (
                started.set_result(e.session or "")
                if e.kind is EventKind.SESSION_STARTED and not started.done()
                else None
            )
        )
        run = asyncio.create_task(supervisor.run(request, output))
        session = await started
        await before_revoke(session)
        while "ready" not in output.text("stdout") and not run.done():
            await asyncio.sleep(0.02)
        grants = supervisor.store.session_grants(session, time.time())
        await supervisor.arevoke([g.id for g in grants])
        return await asyncio.wait_for(run, 60)

    return asyncio.run(scenario())


@pytest.mark.engines
def test_revoking_a_read_write_folder_stops_the_agent_and_keeps_its_changes(
    supervisor: Supervisor, agent_image: str, tmp_path: Path
) -> None:
    """An overlay keeps what the agent looked up or copied up, and its working directory
    pins it: the agent must not read on. It is killed; its staged edit stays reviewable."""
    tree = tmp_path / "tree"
    tree.mkdir(mode=0o777)
    for name, text in (("kept.txt", "untouched\n"), ("edited.txt", "original\n")):
        (tree / name).write_text(text)
        (tree / name).chmod(0o666)
    tmp_path.chmod(0o755)
    script = (
        "import os, time\n"
        f"os.chdir({str(tree)!r})\n"
        "open('edited.txt', 'a').write('by the agent\\n')\n"
        "open('kept.txt').read()\n"
        "print('ready', flush=True)\n"
        "for i in range(600):\n"
        "    print('still reading', open('kept.txt').read().strip(), flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    text = profile_text(agent_image, ["python3", "-c", script])
    request = LaunchRequest(
        parse_profile(text, "t.toml"), Path("t.toml"), (GrantRequest(tree, Mode.READ_WRITE),)
    )
    events: list[Event] = []
    supervisor.bus.attach(events.append)
    output = CollectedOutput()

    async def nothing(session: str) -> None:
        return None

    result = _run_then_revoke(supervisor, request, output, nothing)
    # Its end says why, not only the signal.
    assert result.reason == "stopped: a read-write folder it was granted was revoked", output.text()
    assert output.text("stdout").count("still reading") < 40  # it ran on ~2 s at most
    revoked = [e for e in events if e.kind is EventKind.GRANT_REVOKED]
    assert revoked and revoked[0].details["stopped"] is True
    assert "staged changes are kept" in revoked[0].details["reason"]
    assert (tree / "edited.txt").read_text() == "original\n"  # the host is untouched
    changes = staging_of(supervisor, result.session).changeset().changes
    assert [(c.path, str(c.kind)) for c in changes] == [(tree / "edited.txt", "modified")]


@pytest.mark.engines
def test_revoking_a_saved_file_takes_its_staged_copy_away(
    supervisor: Supervisor, agent_image: str, tmp_path: Path
) -> None:
    """A file opened read-write through the portal is a copy in the saves area: on revoke
    it leaves the agent's reach, even from inside its directory, and stays reviewable."""
    target = tmp_path / "report.txt"
    target.write_text("host content\n")
    target.chmod(0o666)
    tmp_path.chmod(0o755)
    script = (
        "import glob, os, time\n"
        "while not glob.glob('/run/airlock/save/*/report.txt'):\n"
        "    time.sleep(0.02)\n"
        "(path,) = glob.glob('/run/airlock/save/*/report.txt')\n"
        "os.chdir(os.path.dirname(path))\n"
        "open('report.txt', 'a').write('by the agent\\n')\n"
        "print('ready', flush=True)\n"
        "for _ in range(400):\n"
        "    if not os.path.exists('report.txt') and not os.path.exists(path):\n"
        "        break\n"
        "    time.sleep(0.025)\n"
        "print('gone' if not os.path.exists('report.txt') else 'still there', flush=True)\n"
    )
    text = profile_text(agent_image, ["python3", "-c", script])
    request = LaunchRequest(parse_profile(text, "t.toml"), Path("t.toml"))
    output = CollectedOutput()

    async def open_for_writing(session: str) -> None:
        await supervisor.files.open_files(session, [target], Mode.READ_WRITE, Lifetime.SESSION)

    result = _run_then_revoke(supervisor, request, output, open_for_writing)
    assert result.exit_code == 0, output.text()
    assert output.text("stdout").splitlines()[-1] == "gone"
    saves = supervisor.dirs.sessions / result.session / "staging" / "saves"
    assert list(saves.glob("*/report.txt")) == []  # on the host: out of the mounted area
    assert target.read_text() == "host content\n"
    (change,) = staging_of(supervisor, result.session).changeset().changes
    assert change.path == target and str(change.kind) == "modified"
    assert change.staged is not None
    assert change.staged.read_text() == "host content\nby the agent\n"


# Creates, deletes, symlinks and FIFOs in the folder, from 3 processes at full speed for
# `SECONDS` or until SIGUSR1 (the test has seen what it needs), and a fourth making and
# removing deep chains of directories (the watch walks each new directory, so these slow its
# reader down), then one normal write. Names stay under 16 bytes: each event in the folder
# is then 32 bytes in an inotify queue (`wait_for_overflow` counts on it).
STORM = """
import multiprocessing, os, shutil, signal, sys, time
SECONDS = float(sys.argv[1])
def storm(n):
    end = time.time() + SECONDS
    while time.time() < end:
        for j in range(200):
            name = f"s{n}-{j}"
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY)); os.unlink(name)
            os.symlink("nowhere", name); os.unlink(name)
            os.mkfifo(name); os.unlink(name)
def chains():
    end, i = time.time() + SECONDS, 0
    while time.time() < end:
        top = f"chain{i % 4}"
        os.makedirs(top + "/d" * 150, exist_ok=True)
        shutil.rmtree(top, ignore_errors=True)
        i += 1
if __name__ == "__main__":
    workers = [multiprocessing.Process(target=storm, args=(n,)) for n in range(3)]
    workers.append(multiprocessing.Process(target=chains))
    for w in workers: w.start()
    signal.signal(signal.SIGUSR1, lambda *_: [w.terminate() for w in workers])
    for w in workers: w.join()
    time.sleep(5)  # the storm's backlog is read and the watch's event budget refills (200 a
    # second): on a loaded machine that took more than 2 s, and the normal write was summed up
    with open("after-the-storm.txt", "w") as f: f.write("normal write\\n")
    time.sleep(1)
"""


# A supervisor in a process of its own, which the test stops (SIGSTOP) for a few seconds
# while the agent storms on, as a loaded desktop would starve it: the kernel's inotify queue
# then overflows for real. Prints the session's events (but output) as JSON lines.
STORM_SUPERVISOR = """
import asyncio, json, sys
from pathlib import Path
import docker
from app.audit import AuditLog
from app.events import EventBus
from app.grants import GrantRequest, Mode
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile
from app.sessions import LaunchRequest, Supervisor
from app.store import StateStore
from tests.support import CollectedOutput

base, folder, profile = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
dirs = Dirs(config=base / "config", state=base / "state", runtime=base / "run")
dirs.ensure()
bus = EventBus()
audit = AuditLog(dirs.audit)
bus.attach(audit.sink)
bus.attach(lambda e: print(json.dumps(e.to_json()), flush=True)
           if e.kind != "session.output" else None)
supervisor = Supervisor(docker.from_env(), StateStore(dirs.database), bus, dirs,
                        ProfileCatalog(dirs.user_profiles))
request = LaunchRequest(parse_profile(profile, "storm.toml"), Path("storm.toml"),
                        (GrantRequest(folder, Mode.READ_WRITE),))
result = asyncio.run(supervisor.run(request, CollectedOutput()))
audit.close()
print(json.dumps({"kind": "result", "code": result.exit_code, "reason": result.reason}),
      flush=True)
"""


IN_CREATE, IN_DELETE, IN_Q_OVERFLOW = 0x100, 0x200, 0x4000
EVENT_BYTES = 32  # struct inotify_event (16) and a name under 16 bytes, padded to 16


def wait_for_overflow(folder: Path, timeout: float = 60) -> None:
    """Returns once more events happened in `folder` than an inotify queue holds, counted
    from now by a watch of its own: a watch of `folder` whose reader is stopped now has
    overflowed. The queue is read (which empties it) only once it can be full, to see the
    overflow for certain; if it is not there, counting starts again."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.inotify_add_watch(fd, bytes(folder), IN_CREATE | IN_DELETE) >= 0
        full = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text()) * EVENT_BYTES
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queued = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, queued)
            if queued[0] < full:
                time.sleep(0.02)
                continue
            data = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 1 << 20):
                    data += chunk
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                if mask & IN_Q_OVERFLOW:
                    return
                offset += 16 + length
        raise AssertionError(f"the storm did not overflow a watch of {folder} in {timeout} s")
    finally:
        os.close(fd)


def storm_session(
    agent_image: str, tmp_path: Path, seconds: float, stalls: int, extra: str = ""
) -> tuple[dict[str, object], list[object]]:
    """Runs the storm in a session whose supervisor is stopped (SIGSTOP) until its watch
    overflowed, up to `stalls` times or until the session is stopped, each time after the
    next activity.gap (the watch started afresh); returns the session's result and its
    audit records. A stall can fall while the supervisor is between two watches (an
    overflow during a restart restarts it again): it then overflows nothing, hence a
    number of stalls, not an exact one."""
    from app.audit import records

    folder = tmp_path / "work"
    folder.mkdir()
    text = profile_text(agent_image, ["python3", "-c", STORM, str(seconds)], extra=extra)
    root = Path(__file__).parents[2]
    dirs = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    process = subprocess.Popen(
        [sys.executable, "-c", STORM_SUPERVISOR, str(tmp_path), str(folder), text],
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []

    def read_until(*kinds: str) -> str | None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(json.loads(line))
            if lines[-1]["kind"] in kinds:
                return str(lines[-1]["kind"])
        return None

    try:
        read_until("file.created")  # the storm has begun, its watch is in place
        session = str(lines[-1]["session"])
        [upper] = (dirs.sessions / session / "staging").glob("*/upper")
        seen: str | None = "activity.gap"
        for _ in range(stalls):
            process.send_signal(signal.SIGSTOP)
            try:
                wait_for_overflow(upper)
            finally:
                process.send_signal(signal.SIGCONT)
            # The overflow read, the watch started afresh: the next stall can overflow it.
            seen = read_until("activity.gap", "activity.unwatched", "result")
            if seen != "activity.gap":
                break
        if seen == "activity.gap":  # not stopped for being unwatched: end the storm now
            docker.from_env().containers.get(f"airlock-{session}").kill("SIGUSR1")
        read_until()
    finally:
        process.send_signal(signal.SIGCONT)
        process.wait(timeout=120)
    [result] = [e for e in lines if e["kind"] == "result"]
    return result, [
        r
        for r in records(dirs.audit)
        if not isinstance(r, AuditProblem) and r.kind != "session.output"
    ]


def test_a_storm_that_overflows_the_watch_is_an_audited_gap_not_silence(
    agent_image: str, tmp_path: Path
) -> None:
    from app.audit import verify

    result, logged = storm_session(agent_image, tmp_path, 60, stalls=1)

    assert result["code"] == 0, result
    kinds = [r.kind for r in logged]  # type: ignore[attr-defined]
    assert "activity.gap" in kinds, "the storm never overflowed the watch"
    gap = logged[kinds.index("activity.gap")]
    assert gap.details["cause"] == "inotify queue overflowed"  # type: ignore[attr-defined]
    assert gap.details["from"] < gap.details["to"]  # type: ignore[attr-defined]
    written = [i for i, r in enumerate(logged) if r.subject.endswith("/work/after-the-storm.txt")]  # type: ignore[attr-defined]
    assert written and written[-1] > kinds.index("activity.gap")
    assert verify(tmp_path / "state" / "audit").problem is None


def test_a_session_whose_watch_overflows_again_and_again_is_stopped_if_the_profile_says_so(
    agent_image: str, tmp_path: Path
) -> None:
    result, logged = storm_session(
        agent_image, tmp_path, 120, stalls=10, extra='[watch]\nunwatched = "stop"\n'
    )

    assert result["reason"] == (
        "stopped: its file activity could not be watched (inotify queue overflowed 3 times)"
    ), result
    kinds = [r.kind for r in logged]  # type: ignore[attr-defined]
    assert "activity.gap" in kinds  # overflows while the watch restarts join one gap
    [unwatched] = [r for r in logged if r.kind == "activity.unwatched"]  # type: ignore[attr-defined]
    assert unwatched.details["overflows"] == 3  # type: ignore[attr-defined]
