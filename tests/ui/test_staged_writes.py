"""Staged writes through the real command line, run by an unprivileged desktop user: the host
stays byte-identical until a commit, and a commit changes exactly what was approved."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import DesktopUser, profile_text
from tests.ui.test_sandbox_escapes import snapshot, wait_running

pytestmark = pytest.mark.docker


def run_agent(user: DesktopUser, image: str, script: str, grants: list[str],
              **profile: str | int) -> tuple[subprocess.CompletedProcess[str], str]:
    path = user.write(f"agent-{time.monotonic_ns()}.toml",
                      profile_text(image, ["sh", "-c", script], **profile))  # type: ignore[arg-type]
    arguments = ["run", "--profile", str(path)]
    for grant in grants:
        arguments += ["--grant", grant]
    result = user.run(*arguments)
    sessions = json.loads(user.run("sessions", "--all", "--json").stdout)
    return result, sessions[-1]["id"]


def changes(user: DesktopUser, session: str) -> dict[str, dict[str, object]]:
    result = user.run("changes", session, "--json")
    assert result.returncode == 0, result.stderr
    return {c["path"]: c for c in json.loads(result.stdout)["changes"]}


@pytest.fixture
def project(tester: DesktopUser) -> Path:
    tester.write("proj/a.txt", "alpha\n")
    tester.write("proj/b.txt", "beta\n")
    tester.write("proj/c.txt", "gamma\n")
    tester.write("proj/sub/d.txt", "delta\n")
    tester.write("proj/old/e.txt", "epsilon\n")
    tester.write("proj/run.sh", "#!/bin/sh\n", mode=0o644)
    return tester.base / "proj"


EDITS = (
    "echo more >> a.txt; echo new > new.txt; rm c.txt; mv b.txt b-renamed.txt; "
    "chmod 755 run.sh; mkdir -p made/deeper; echo deep > made/deeper/f.txt; rm -rf old; "
    "echo changed > sub/d.txt"
)


def test_host_is_untouched_until_commit_and_then_exactly_the_approved_paths_change(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    before = snapshot(project)
    result, session = run_agent(tester, agent_image, EDITS, [f"{project}:rw"])
    assert result.returncode == 0, result.stderr
    assert snapshot(project) == before  # nothing reached the host yet

    listed = changes(tester, session)
    kinds = {Path(p).relative_to(project).as_posix(): c["kind"] for p, c in listed.items()}
    assert kinds == {
        "a.txt": "modified", "new.txt": "added", "c.txt": "deleted",
        "b-renamed.txt": "renamed", "run.sh": "mode", "made": "added", "made/deeper": "added",
        "made/deeper/f.txt": "added", "old": "deleted", "sub/d.txt": "modified",
    }
    assert listed[str(project / "b-renamed.txt")]["renamed_from"] == str(project / "b.txt")
    diff = tester.run("changes", session, "--diff").stdout
    assert "+more" in diff and "-gamma" in diff

    committed = tester.run("commit", session, str(project / "a.txt"), str(project / "made"),
                           str(project / "b-renamed.txt"))
    assert committed.returncode == 0, committed.stderr
    after = snapshot(project)
    assert (project / "a.txt").read_text() == "alpha\nmore\n"
    assert (project / "made" / "deeper" / "f.txt").read_text() == "deep\n"
    assert (project / "b-renamed.txt").read_text() == "beta\n" and not (project / "b.txt").exists()
    untouched = {k: v for k, v in before.items()
                 if k not in ("", "a.txt", "b.txt")}
    assert {k: after[k] for k in untouched} == untouched  # c.txt, old/, sub/, run.sh as before
    remaining = {Path(p).relative_to(project).as_posix() for p in changes(tester, session)}
    assert remaining == {"new.txt", "c.txt", "run.sh", "old", "sub/d.txt"}

    rest = tester.run("commit", session)
    assert rest.returncode == 0, rest.stderr
    assert not (project / "c.txt").exists() and not (project / "old").exists()
    assert stat.S_IMODE((project / "run.sh").stat().st_mode) == 0o755
    assert changes(tester, session) == {}


def test_undo_restores_and_refuses_files_changed_since(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    before = snapshot(project)
    _, session = run_agent(tester, agent_image, "echo x >> a.txt; rm c.txt; rm -rf old; "
                           "echo n > n.txt; echo y >> b.txt", [f"{project}:rw"])
    first = tester.run("commit", session)
    assert first.returncode == 0, first.stderr
    commit = json.loads(tester.run("history", "--json").stdout)[0]["id"]
    (project / "b.txt").write_text("edited by the user after the commit\n")
    undone = tester.run("undo", commit)
    assert undone.returncode == 1
    assert f"refused: {project / 'b.txt'}: changed since the commit" in undone.stderr
    assert (project / "b.txt").read_text() == "edited by the user after the commit\n"
    after = snapshot(project)
    for name in ("a.txt", "c.txt", "old", "old/e.txt"):
        assert after[name][1:] == before[name][1:], name  # content back (mode, size, hash)
    assert not (project / "n.txt").exists()
    history = json.loads(tester.run("history", "--json").stdout)
    assert history[0]["undo_of"] == commit and history[1]["undone_by"] == history[0]["id"]
    again = tester.run("undo", commit)
    assert "already undone" in again.stderr and again.returncode != 0


def test_hostile_staged_entries_are_refused_precisely(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    ssh = tester.home / ".ssh"
    ssh.mkdir(exist_ok=True)
    tester.own(ssh)
    keys = ssh / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAA the-users-own-key\n")
    tester.own(keys)
    keys_before = keys.read_bytes()
    before = snapshot(project)
    script = (
        f"ln -s {keys} keys-abs; ln -s ../../../.ssh/authorized_keys keys-rel; "
        "ln a.txt hard.txt; mkfifo pipe; cp /bin/sh tool; chmod u+s tool; "
        "printf x > \"$(printf 'bad\\033name')\"; printf x > \"$(printf 'c1\\302\\233red')\"; "
        "printf x > \"$(printf 'evil\\342\\200\\256txt.sh')\"; "
        "head -c 3000000 /dev/zero > big.bin; echo ok > fine.txt"
    )
    result, session = run_agent(tester, agent_image, script, [f"{project}:rw"], staging="1m")
    assert result.returncode == 0, result.stderr
    committed = tester.run("commit", session)
    refused = dict(line.removeprefix("refused: ").split(": ", 1)
                   for line in committed.stderr.splitlines() if line.startswith("refused: "))
    by_name = {Path(p).name: reason for p, reason in refused.items()}
    assert "outside" in by_name["keys-abs"] and "outside" in by_name["keys-rel"]
    assert "hard link" in by_name["hard.txt"]
    assert "FIFO" in by_name["pipe"]
    assert "set-user-ID" in by_name["tool"]
    assert "control characters" in by_name["bad\\u001bname"]  # escaped on the terminal too
    assert "control characters" in by_name["c1\\u009bred"]  # C1: 0x9b starts an escape too
    assert "control characters" in by_name["evil\\u202etxt.sh"]  # shows as "evil.sh.txt"
    assert "staging quota" in by_name["big.bin"]
    assert committed.returncode == 1
    assert (project / "fine.txt").read_text() == "ok\n"  # the rest was committed
    assert keys.read_bytes() == keys_before
    after = snapshot(project)
    assert {k: v for k, v in after.items() if k != "fine.txt" and k != ""} == {
        k: v for k, v in before.items() if k != ""}


def test_a_huge_directory_is_refused_without_hanging(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    script = ("mkdir many && cd many && "
              "python3 -c \"[open(str(i), 'w').close() for i in range(100000)]\"")
    result, session = run_agent(tester, agent_image, script, [f"{project}:rw"], pids=64)
    assert result.returncode == 0, result.stderr
    listed = json.loads(tester.run("changes", session, "--json").stdout)
    assert listed["truncated"] is True
    committed = tester.run("commit", session)
    assert committed.returncode != 0
    assert "more than 50000 changes" in committed.stderr
    assert not (project / "many").exists()


def test_conflicting_host_edit_is_never_overwritten(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    path = tester.write("slow.toml", profile_text(
        agent_image, ["sh", "-c", "echo agent >> a.txt; sleep 3"]))
    process = tester.popen("run", "--profile", str(path), "--grant", f"{project}:rw")
    session = wait_running(tester, process)["id"]
    deadline = time.monotonic() + 30
    while str(project / "a.txt") not in changes(tester, session) and time.monotonic() < deadline:
        time.sleep(0.1)
    with open(project / "a.txt", "a") as f:
        f.write("user\n")  # the user edits the same file meanwhile
    process.communicate(timeout=60)
    committed = tester.run("commit", session)
    assert committed.returncode == 1
    assert "conflict: changed on the host since it was granted (host sha256" in committed.stderr
    assert "staged sha256" in committed.stderr
    assert (project / "a.txt").read_text() == "alpha\nuser\n"


def test_killed_mid_commit_every_file_is_old_or_new(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    script = "mkdir bulk && for i in $(seq 1000); do echo new-$i > bulk/f$i; done"
    for i in range(1, 1001):
        tester.write(f"proj/bulk/f{i}", f"old-{i}\n")
    result, session = run_agent(tester, agent_image,
                                script.replace("mkdir bulk && ", ""), [f"{project}:rw"])
    assert result.returncode == 0, result.stderr
    process = tester.popen("commit", session, extra_env={"AIRLOCK_COMMIT_PAUSE": "0.004"})
    bulk = project / "bulk"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sum(1 for i in range(1, 1001) if (bulk / f"f{i}").read_text().startswith("new"))
        if new > 50:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the commit finished before it could be interrupted"
    # The crash: SIGKILL, so no clean-up code of the committing process runs.
    subprocess.run(["pkill", "-KILL", "-f", f"airlock commit {session}"], check=False)
    process.wait(timeout=30)
    contents = [(bulk / f"f{i}").read_text() for i in range(1, 1001)]
    assert all(c in (f"old-{i}\n", f"new-{i}\n") for i, c in enumerate(contents, 1))
    assert 0 < sum(c.startswith("new") for c in contents) < 1000  # it really was cut short
    history = tester.run("history", "--json")  # the next start resolves the journal
    records = json.loads(history.stdout)
    assert records[0]["state"] == "done"
    assert all((bulk / f"f{i}").read_text() == f"new-{i}\n" for i in range(1, 1001))
    leftovers = [p.name for p in bulk.iterdir() if p.name.startswith(".airlock-")]
    assert leftovers == []


def test_once_the_session_has_ended_its_files_are_moved_into_place(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    # The container is gone, and with it anything that could still write a staged file:
    # committing renames the agent's files into place instead of copying them.
    _, session = run_agent(tester, agent_image, "echo new > new.txt; echo more >> a.txt",
                           [f"{project}:rw"])
    (staging,) = tester.base.glob(f".state/airlock/sessions/{session}/staging")
    assert (staging / "sealed").is_file()
    staged = {name: next(staging.glob(f"*/upper/{name}")).stat().st_ino
              for name in ("new.txt", "a.txt")}
    committed = tester.run("commit", session)
    assert committed.returncode == 0, committed.stderr
    assert {name: (project / name).stat().st_ino for name in staged} == staged
    assert (project / "a.txt").read_text() == "alpha\nmore\n"
    assert (project / "new.txt").read_text() == "new\n"
    assert changes(tester, session) == {}
    # Nothing is left to review, so nothing is kept (but what the kernel left in the
    # overlay's work directory, root's, which the user cannot remove).
    assert (staging / "sealed").is_file()
    assert not list(staging.glob("*/upper")) and not list(staging.glob("*/root.json"))


def test_discard_forgets_staged_changes(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    _, session = run_agent(tester, agent_image, "echo x >> a.txt; echo n > n.txt",
                           [f"{project}:rw"])
    dropped = tester.run("discard", session, str(project / "n.txt"))
    assert f"discarded: {project / 'n.txt'}" in dropped.stdout
    assert set(changes(tester, session)) == {str(project / "a.txt")}
    tester.run("discard", session)
    assert changes(tester, session) == {}
    assert (project / "a.txt").read_text() == "alpha\n"
    (staging,) = tester.base.glob(f".state/airlock/sessions/{session}/staging")
    assert (staging / "sealed").is_file()  # the ended session's staging: all of it gone
    assert not list(staging.glob("*/upper")) and not list(staging.glob("*/root.json"))


def test_read_write_file_grant_is_staged_too(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    target = project / "a.txt"
    result, session = run_agent(tester, agent_image, f"echo edit >> {target}; cat {target}",
                                [f"{target}:rw"])
    assert result.stdout == "alpha\nedit\n"
    assert target.read_text() == "alpha\n"
    assert list(changes(tester, session)) == [str(target)]
    assert tester.run("commit", session).returncode == 0
    assert target.read_text() == "alpha\nedit\n"


def test_activity_stream_and_audit_log_name_what_the_agent_did(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    canary = "CANARY-7d1e-" + "x" * 8
    tester.write("proj/read.txt", f"{canary}\n")
    script = "cat read.txt > /dev/null; echo more >> a.txt; rm c.txt; sleep 0.5"
    result, session = run_agent(tester, agent_image, script, [f"{project}:rw"])
    assert result.returncode == 0, result.stderr
    shown = tester.run("audit", "show", "--session", session, "--json")
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert all(r["session"] == session for r in records)
    files: dict[str, set[str]] = {}
    for record in records:
        if record["kind"].startswith("file."):
            files.setdefault(record["subject"], set()).add(record["kind"])
    assert set(files) == {str(project / n) for n in ("read.txt", "a.txt", "c.txt")}
    assert files[str(project / "read.txt")] == {"file.opened", "file.read"}
    assert "file.written" in files[str(project / "a.txt")]
    assert files[str(project / "c.txt")] == {"file.deleted"}
    audit = tester.base / ".state" / "airlock" / "audit"
    raw = b"".join(p.read_bytes() for p in audit.rglob("*") if p.is_file())
    assert canary.encode() not in raw
    assert tester.run("audit", "verify").returncode == 0


def test_run_asks_on_the_terminal_before_committing(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    import pty
    import select

    path = tester.write("writer.toml", profile_text(agent_image, ["sh", "-c", "echo n > n.txt"]))
    env = dict(tester.env)
    main, secondary = pty.openpty()
    command = [*tester.prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
               str(Path(tester.env["PATH"].split(":")[0]) / "airlock"), "run", "--profile",
               str(path), "--grant", f"{project}:rw"]
    process = subprocess.Popen(command, stdin=secondary, stdout=secondary, stderr=secondary,
                               cwd=tester.base)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[d]iff" not in seen and time.monotonic() < deadline:
        if select.select([main], [], [], 1)[0]:
            seen += os.read(main, 4096)
    assert b"A file" in seen and str(project / "n.txt").encode() in seen
    assert not (project / "n.txt").exists()
    os.write(main, b"y\n")
    process.wait(timeout=60)
    with contextlib.suppress(OSError):
        seen += os.read(main, 65536)
    os.close(main)
    assert (project / "n.txt").read_text() == "n\n"


def test_unreadable_staged_entries_are_named_and_the_rest_still_commits(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    result, session = run_agent(tester, agent_image, (
        "echo s > secret0; chmod 000 secret0; mkdir d0; echo x > d0/f; chmod 000 d0; "
        "echo ok > fine.txt"), [f"{project}:rw"])
    assert result.returncode == 0, result.stderr
    listed = changes(tester, session)
    assert listed[str(project / "fine.txt")]["problems"] == []
    assert listed[str(project / "secret0")]["problems"] == [
        "cannot be read (Permission denied): not committed"]
    assert listed[str(project / "d0")]["problems"] == [
        "cannot be read (Permission denied): what it holds is not listed"]
    committed = tester.run("commit", session)
    assert committed.returncode == 1 and "secret0" in committed.stderr, committed.stderr
    assert (project / "fine.txt").read_text() == "ok\n"
    assert not (project / "secret0").exists() and not (project / "d0").exists()
