"""The agent tries to break out, through the real command line run by an unprivileged user in
the docker group. Each test looks for the effect on the host: a planted secret that must not
appear, a file that must not change, a container that must not exist."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from app.container import LABEL_SESSION
from tests.support import DesktopUser, Lines, containers, profile_text

pytestmark = pytest.mark.docker

SHELL_PROBES = r"""
for f in "$HOME_DIR/.ssh/id_rsa" /etc/shadow /proc/1/root/etc/shadow /host/etc/shadow; do
  cat "$f" 2>&1 | head -c 300
done
ls -la /home "$HOME_DIR" 2>&1
find / -xdev \( -name 'id_rsa*' -o -name '*.sock' -o -name 'marker-*' \) 2>/dev/null
ls -la /var/run /run 2>&1
"""


def run_agent(
    user: DesktopUser,
    image: str,
    command: list[str],
    grants: list[str] = (),  # type: ignore[assignment]
    extra_env: dict[str, str] | None = None,
    **profile: str | int,
) -> subprocess.CompletedProcess[str]:
    path = user.write(f"agent-{time.monotonic_ns()}.toml", profile_text(image, **profile))  # type: ignore[arg-type]
    arguments = ["run", "--profile", str(path)]
    for grant in grants:
        arguments += ["--grant", grant]
    return user.run(*arguments, "--", *command, extra_env=extra_env)


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under root: mode, size and content hash, as the host sees it."""
    entries: dict[str, tuple[int, int, str]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = os.lstat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        entries[str(path.relative_to(root))] = (st.st_mode, st.st_size, digest)
    return entries


@pytest.fixture
def granted(tester: DesktopUser) -> Path:
    tester.write("notes/a.md", "# alpha\n")
    tester.write("notes/private.md", "only mine\n", mode=0o600)
    tester.write("notes/sub/b.md", "beta\n")
    return tester.base / "notes"


def test_agent_runs_as_the_user_and_reads_only_the_grant(
    tester: DesktopUser, agent_image: str, granted: Path
) -> None:
    secret = f"FAKE-PRIVATE-KEY-{os.urandom(8).hex()}"
    ssh = tester.home / ".ssh"
    ssh.mkdir(exist_ok=True)
    tester.own(ssh)
    (ssh / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n")
    tester.own(ssh / "id_rsa")
    marker = f"marker-{os.urandom(6).hex()}"
    tester.write(marker, "x")
    shadow = Path("/etc/shadow").read_text() if os.access("/etc/shadow", os.R_OK) else ""
    result = run_agent(
        tester,
        agent_image,
        ["sh", "-c", "id -u; pwd; cat private.md sub/b.md; " + SHELL_PROBES],
        [str(granted)],
        extra_env={"HOME_DIR": str(tester.home)},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = result.stdout.splitlines()
    assert lines[:4] == [str(tester.uid), str(granted), "only mine", "beta"]
    assert secret not in out
    assert marker not in out
    assert "docker.sock" not in out
    for line in shadow.splitlines():
        if line.startswith(("root:", f"{tester.name}:")):
            assert line not in out


def test_clean_environment_and_no_host_processes(tester: DesktopUser, agent_image: str) -> None:
    canary = f"canary-{os.urandom(6).hex()}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", canary])
    try:
        result = run_agent(
            tester,
            agent_image,
            ["sh", "-c", "env; cat /proc/1/environ; ps auxww; cat /proc/[0-9]*/cmdline; hostname"],
            extra_env={"CANARY_TOKEN": canary, "SSH_AUTH_SOCK": f"/tmp/{canary}"},
        )
    finally:
        host.kill()
    out = result.stdout + result.stderr
    assert canary not in out
    assert "airlock" in result.stdout.splitlines()[-1]  # the hostname is the sandbox's own
    processes = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(str(tester.uid)) or line.split()[:1] == [tester.name]
    ]
    assert len(processes) <= 5, processes


def test_docker_socket_is_unreachable(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient
) -> None:
    name = f"escape-{os.urandom(4).hex()}"
    body = json.dumps({"Image": agent_image, "Cmd": ["true"]})
    attack = (
        f"for s in /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock; do "
        f"curl -s --max-time 2 --unix-socket $s -H 'Content-Type: application/json' "
        f"-d '{body}' http://localhost/containers/create?name={name}; done; true"
    )
    run_agent(tester, agent_image, ["sh", "-c", attack])
    assert engine.containers.list(all=True, filters={"name": name}) == []


def test_read_only_grant_cannot_be_changed(
    tester: DesktopUser, agent_image: str, granted: Path
) -> None:
    before = snapshot(granted)
    attack = (
        "echo pwned >> a.md; echo pwned > new.md; rm -f sub/b.md; mv a.md moved.md; "
        "chmod 777 a.md; ln a.md hard.md; ln -s /etc/passwd link.md; mkdir d; "
        "touch -d 2000-01-01 a.md; "
        "python3 -c \"import os; fd=os.open('a.md', os.O_RDWR); os.write(fd, b'x')\"; "
        "truncate -s 0 a.md; true"
    )
    run_agent(tester, agent_image, ["sh", "-c", attack], [str(granted)])
    assert snapshot(granted) == before


def test_mount_unshare_setuid_and_device_nodes_do_not_reach_the_host(
    tester: DesktopUser, agent_image: str, granted: Path
) -> None:
    before = snapshot(granted)
    dev = os.stat("/").st_dev
    attack = (
        f"mount -t tmpfs none {granted} ; mount -o remount,rw {granted}; "
        f"unshare -Urm sh -c 'mount -t tmpfs none {granted} && touch {granted}/pwned'; "
        f"unshare -U true && echo UNSHARE-WORKED; "
        f"cp /bin/sh /tmp/sh && chmod u+s /tmp/sh && echo SETUID-SET; "
        f"/bin/su -c 'touch {granted}/pwned' root </dev/null; "
        f"mknod /tmp/disk b {os.major(dev)} {os.minor(dev)} && echo MKNOD-WORKED; "
        f"head -c 4096 /tmp/disk 2>/dev/null | od -An -tx1 | head -50; "
        f"touch {granted}/pwned; true"
    )
    result = run_agent(tester, agent_image, ["sh", "-c", attack], [str(granted)])
    out = result.stdout + result.stderr
    assert "UNSHARE-WORKED" not in out
    assert "MKNOD-WORKED" not in out
    assert snapshot(granted) == before
    # The setuid bit may be set on /tmp/sh, but /tmp is nosuid and no-new-privileges holds:
    # the effect that matters is that nothing changed on the host, checked above.


def test_seccomp_profile_is_applied(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient
) -> None:
    numbers = {
        "x86_64": {
            "ptrace": 101,
            "mount": 165,
            "unshare": 272,
            "keyctl": 250,
            "bpf": 321,
            "userfaultfd": 323,
            "perf_event_open": 298,
            "io_uring_setup": 425,
            "kexec_load": 246,
            "init_module": 175,
            "setns": 308,
        },
        "aarch64": {
            "ptrace": 117,
            "mount": 40,
            "unshare": 97,
            "keyctl": 219,
            "bpf": 280,
            "userfaultfd": 282,
            "perf_event_open": 241,
            "io_uring_setup": 425,
            "kexec_load": 104,
            "init_module": 105,
            "setns": 268,
        },
    }[platform.machine()]
    probe = (
        "import ctypes, json, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"calls = {numbers!r}\n"
        "result = {}\n"
        "for name, nr in calls.items():\n"
        "    ret = libc.syscall(nr, 0, 0, 0, 0, 0)\n"
        "    result[name] = (ret, ctypes.get_errno())\n"
        "status = open('/proc/self/status').read()\n"
        "result['mode'] = [l.split()[1] for l in status.splitlines() if l.startswith('Seccomp:')]\n"
        "print(json.dumps(result), flush=True)\n"
        "import time; time.sleep(3)\n"
    )
    path = tester.write("seccomp.toml", profile_text(agent_image, ["python3", "-c", probe]))
    process = tester.popen("run", "--profile", str(path))
    try:
        deadline = time.monotonic() + 60
        running: list[dict[str, object]] = []
        while time.monotonic() < deadline and not running:
            running = containers(engine, LABEL_SESSION, stopped=False)
            time.sleep(0.1)
        assert running, "the session never started"
        attrs = engine.api.inspect_container(running[0]["Id"])
        shipped = json.loads(
            (
                Path(__file__).parents[2] / "profiles" / "seccomp" / "airlock-default.json"
            ).read_text()
        )
        applied = [o for o in attrs["HostConfig"]["SecurityOpt"] if o.startswith("seccomp=")]
        assert len(applied) == 1 and json.loads(applied[0][len("seccomp=") :]) == shipped
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    result = json.loads(out.splitlines()[0])
    assert result.pop("mode") == ["2"]
    for name, (ret, errno) in result.items():
        assert ret == -1 and errno in (1, 38), f"{name} was not refused: {ret}, errno {errno}"


def test_run_as_unprivileged_user_exit_status_and_streams(
    tester: DesktopUser, agent_image: str
) -> None:
    result = run_agent(tester, agent_image, ["sh", "-c", "echo out; echo err >&2; exit 42"])
    assert result.returncode == 42
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "--profile", "nope"], "airlock: no profile named 'nope'"),
        (
            ["run", "--profile", "notes-organizer", "--grant", "/nonexistent"],
            "airlock: /nonexistent: no such file or directory",
        ),
        (["run", "--profile", "notes-organizer", "--grant", "/"], "granting the whole file system"),
        (
            ["run", "--profile", "notes-organizer", "--timeout", "soon"],
            "airlock: --timeout: invalid duration 'soon'",
        ),
        (["stop", "deadbeef"], "airlock: no running session 'deadbeef'"),
        (["revoke", "g-nothere"], "airlock: no grant 'g-nothere'"),
        (["revoke"], "airlock: name one grant, or --session SESSION, or --all"),
    ],
)
def test_bad_input_gets_one_clear_line(
    tester: DesktopUser, arguments: list[str], message: str, agent_image: str
) -> None:
    result = tester.run(*arguments)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_revoke_removes_access_from_the_running_agent(
    tester: DesktopUser, agent_image: str, granted: Path
) -> None:
    watcher = (
        "import os, sys, time\n"
        "seen = False\n"
        "for _ in range(6000):\n"
        "    here = os.path.exists('a.md')\n"
        "    if here and not seen: seen = True; print('SEEN', flush=True)\n"
        "    if seen and not here:\n"
        "        print('GONE', time.time(), flush=True); sys.exit(0)\n"
        "    time.sleep(0.01)\n"
        "print('STILL-THERE', flush=True)\n"
    )
    path = tester.write("revoke.toml", profile_text(agent_image, ["python3", "-c", watcher]))
    process = tester.popen("run", "--profile", str(path), "--grant", str(granted))
    try:
        session = wait_running(tester, process)["id"]
        lines = Lines(process)
        assert lines.take(1, timeout=60) == ["SEEN\n"], "the agent never saw the file"
        revoked_at = time.time()
        result = tester.run("revoke", "--session", session)
        returned_at = time.time()
        assert result.returncode == 0, result.stderr
        assert str(granted) in result.stdout
        [out] = lines.take(1, timeout=30)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert out.startswith("GONE"), out
    gone_at = float(out.split()[1])
    # The agent polls every 10 ms; the container shares the host's clock. Gone no later than
    # 100 ms after `airlock revoke` returned (most of the command's time is its start-up).
    assert revoked_at < gone_at < returned_at + 0.1, (revoked_at, gone_at, returned_at)
    assert (granted / "a.md").read_text() == "# alpha\n"  # the host file is untouched


def wait_running(
    user: DesktopUser, process: subprocess.Popen[str] | None = None, timeout: float = 90
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"airlock run ended before it was seen: {process.communicate()}")
        listed = user.run("sessions", "--json")
        assert listed.returncode == 0, listed.stderr
        listing = json.loads(listed.stdout or "[]")
        running = [s for s in listing if s["state"] == "running"]
        if running:
            return running[0]  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError("no session started")


def test_ps_stop_and_interrupt_leave_no_container(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient
) -> None:
    # Two sessions at once, one ended by `airlock stop` and one by Ctrl-C: their start-ups
    # and clean-ups overlap instead of adding up.
    path = tester.write("long.toml", profile_text(agent_image, ["sh", "-c", "sleep 300"]))
    processes = [tester.popen("run", "--profile", str(path)) for _ in range(2)]
    try:
        deadline = time.monotonic() + 90
        running: list[dict[str, str]] = []
        while len(running) < 2:
            assert time.monotonic() < deadline, "the sessions did not start"
            assert all(p.poll() is None for p in processes), [
                p.communicate() for p in processes if p.poll() is not None
            ]
            listed = tester.run("sessions", "--json")
            assert listed.returncode == 0, listed.stderr
            running = [s for s in json.loads(listed.stdout or "[]") if s["state"] == "running"]
            time.sleep(0.1)
        for session in running:
            ps = tester.run("ps", session["id"], "--json")
            assert ps.returncode == 0, ps.stderr
            assert any("sleep 300" in p.get("COMMAND", "") for p in json.loads(ps.stdout))
        stopped, interrupted = running
        result = tester.run("stop", stopped["id"])
        assert result.returncode == 0, result.stderr
        os.kill(int(interrupted["supervisor"].split(":")[0]), 2)  # Ctrl-C
        for process in processes:
            process.communicate(timeout=60)
    finally:
        for process in processes:
            process.kill()
    for session in running:
        assert containers(engine, f"{LABEL_SESSION}={session['id']}") == []
    assert json.loads(tester.run("sessions", "--json").stdout) == []
    ended = json.loads(tester.run("sessions", "--all", "--json").stdout)
    assert {s["id"]: s["reason"] for s in ended} == {
        stopped["id"]: "stopped by `airlock stop`",
        interrupted["id"]: "interrupted",
    }


def test_a_killed_supervisor_does_not_leave_its_agent_running_unwatched(
    tester: DesktopUser, agent_image: str, engine: docker.DockerClient
) -> None:
    # SIGKILL: no handler runs, no `finally`. The agent must still not run on, past its
    # timeout and with nothing recording what it does, until the next airlock command.
    path = tester.write("long.toml", profile_text(agent_image, ["sh", "-c", "sleep 300"]))
    process = tester.popen("run", "--profile", str(path))
    try:
        session = wait_running(tester, process)
        label = f"{LABEL_SESSION}={session['id']}"
        assert containers(engine, label, stopped=False)
        os.kill(int(session["supervisor"].split(":")[0]), 9)
        process.communicate(timeout=60)
    finally:
        process.kill()
    deadline = time.monotonic() + 30
    while containers(engine, label) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers(engine, label) == []


def test_profile_grants_are_listed_applied_and_revoked(
    tester: DesktopUser, agent_image: str, granted: Path
) -> None:
    path = tester.write("reader.toml", profile_text(agent_image, ["cat", str(granted / "a.md")]))
    added = tester.run("grant", "--profile", str(path), str(granted / "a.md"))
    assert added.returncode == 0, added.stderr
    grant_id = added.stdout.split(":")[0]
    listed = json.loads(tester.run("grants", "--json").stdout)
    assert [(g["id"], g["lifetime"], g["profile"]) for g in listed] == [
        (grant_id, "always", "test-agent")
    ]
    assert tester.run("run", "--profile", str(path)).stdout == "# alpha\n"
    revoked = tester.run("revoke", grant_id)
    assert revoked.returncode == 0 and grant_id in revoked.stdout
    assert json.loads(tester.run("grants", "--json").stdout) == []
    after = tester.run("run", "--profile", str(path))
    assert after.returncode != 0 and "# alpha" not in after.stdout
    assert tester.run("revoke", "--all").stdout.strip() == "nothing to revoke"
