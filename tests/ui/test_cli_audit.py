"""`airlock audit` and `airlock watch` run as the real console script against a temp HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.audit import AuditLog, segments
from app.events import Event, EventKind
from app.text import UNSAFE
from tests.support import Lines, until_followed

AIRLOCK = Path(sys.executable).with_name("airlock")
CANARY = "CANARY-5be0c1-never-in-the-log"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env |= {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"), "NO_COLOR": "1"}
    return env


def audit_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) / "airlock" / "audit"


def airlock(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIRLOCK), *args], env=env, capture_output=True, text=True, timeout=60
    )


def fill(env: dict[str, str], count: int = 10, **options: int) -> None:
    with AuditLog(audit_dir(env), **options) as log:
        for n in range(count):
            session = "alpha-1" if n % 2 else "beta-2"
            log.append(Event(EventKind.FILE_WRITTEN, session, f"/home/u/f{n}.md", {"count": n + 1}))
            if "segment_bytes" in options:
                log.sync()  # a full segment is closed once durable: rotate at the limit


def test_show_prints_aligned_lines_and_filters_by_session(home: dict[str, str]) -> None:
    fill(home)

    result = airlock(home, "audit", "show", "--session", "alpha")

    assert result.returncode == 0, result.stderr
    shown = result.stdout.splitlines()
    assert len(shown) == 5
    assert all("alpha-1" in line and "file.written" in line for line in shown)
    assert shown[1].endswith("file.written     /home/u/f3.md ×4")
    assert len({line.index("file.written") for line in shown}) == 1


def test_show_json_and_since(home: dict[str, str]) -> None:
    fill(home, 3)

    everything = airlock(home, "audit", "show", "--json", "--since", "1h")
    nothing = airlock(home, "audit", "show", "--since", "2999-01-01")
    bad = airlock(home, "audit", "show", "--since", "yesterdayish")

    assert [json.loads(line)["seq"] for line in everything.stdout.splitlines()] == [1, 2, 3]
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert bad.returncode == 2
    assert "'yesterdayish' is neither a time" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_verify_passes_a_whole_log_across_rotation(home: dict[str, str]) -> None:
    fill(home, 60, segment_bytes=2000)

    result = airlock(home, "audit", "verify")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 60 records in")


def tamper(env: dict[str, str], change: str) -> subprocess.CompletedProcess[str]:
    fill(env, 10)
    [segment] = segments(audit_dir(env))
    content = segment.read_bytes().splitlines(keepends=True)
    if change == "edit a byte":
        content[4] = content[4].replace(b"f4.md", b"f5.md")
    elif change == "delete a line":
        del content[4]
    elif change == "swap two lines":
        content[4], content[5] = content[5], content[4]
    segment.write_bytes(b"".join(content))
    if change == "truncate the tail":
        os.truncate(segment, segment.stat().st_size - 40)
    return airlock(env, "audit", "verify")


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        ("edit a byte", 5, "edited: the record does not match its hash"),
        ("delete a line", 5, "record 5 is missing (dropped)"),
        ("swap two lines", 5, "record 5 is missing (dropped)"),
        ("truncate the tail", 10, "truncated: the last line is incomplete"),
    ],
)
def test_verify_names_the_first_bad_record(
    home: dict[str, str], change: str, line: int, reason: str
) -> None:
    result = tamper(home, change)

    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert (
        first == f"airlock: audit log broken at {audit_dir(home) / '000001.jsonl'}:{line}: {reason}"
    )
    assert "Traceback" not in result.stderr


def test_verify_without_a_log_says_so(home: dict[str, str]) -> None:
    result = airlock(home, "audit", "verify")

    assert result.returncode == 2
    assert result.stderr.strip() == f"airlock: no audit log at {audit_dir(home)}"


def test_corrupt_lines_make_show_skip_them_with_a_message(home: dict[str, str]) -> None:
    fill(home, 3)
    [segment] = segments(audit_dir(home))
    segment.write_bytes(segment.read_bytes() + b"\x00\xffnot json\n")

    result = airlock(home, "audit", "show")

    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.strip().endswith("000001.jsonl:4: not a JSON record")


def test_export_verifies_as_a_file_and_refuses_to_overwrite(
    home: dict[str, str], tmp_path: Path
) -> None:
    fill(home, 40, segment_bytes=2000)
    exported = tmp_path / "audit-export.jsonl"

    written = airlock(home, "audit", "export", "-o", str(exported))
    again = airlock(home, "audit", "export", "-o", str(exported))
    checked = airlock(home, "audit", "verify", str(exported))

    assert written.returncode == 0
    assert len(exported.read_bytes().splitlines()) == 40
    assert (again.returncode, again.stderr.strip()) == (
        2,
        f"airlock: {exported} exists; not overwriting it",
    )
    assert checked.stdout.startswith("ok: 40 records in 1 file(s)")


def test_no_canary_from_details_reaches_the_log(home: dict[str, str], tmp_path: Path) -> None:
    granted = tmp_path / "granted.txt"
    granted.write_text(CANARY)
    with AuditLog(audit_dir(home)) as log:
        log.append(Event(EventKind.SESSION_OUTPUT, "s1", "agent", {"line": CANARY}))
        log.append(Event(EventKind.FILE_READ, "s1", str(granted), {"body": granted.read_bytes()}))

    shown = airlock(home, "audit", "show", "--json")
    exported = airlock(home, "audit", "export")

    assert CANARY not in shown.stdout
    assert CANARY not in exported.stdout
    assert all(CANARY.encode() not in p.read_bytes() for p in audit_dir(home).iterdir())


def test_watch_follows_other_processes_across_rotation(home: dict[str, str]) -> None:
    fill(home, 2)
    watcher = subprocess.Popen(
        [str(AIRLOCK), "watch", "alpha", "--json"],
        env=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def mark() -> None:
        with AuditLog(audit_dir(home)) as log:
            log.append(Event(EventKind.FILE_WRITTEN, "alpha-0", "/home/u/mark", {"count": 1}))

    try:
        lines = Lines(watcher)
        until_followed(lines, mark, lambda line: "alpha-0" in line)
        fill(home, 40, segment_bytes=1500)
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 15
        while len(seen) < 20 and time.monotonic() < deadline:
            more = [json.loads(line) for line in lines.take(1, timeout=1)]
            seen += [r for r in more if r["session"] != "alpha-0"]  # marks still on their way
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)

    assert [r["subject"] for r in seen] == [f"/home/u/f{n}.md" for n in range(1, 40, 2)]
    seqs = [r["seq"] for r in seen]
    assert seqs == list(range(seqs[0], seqs[0] + 40, 2))  # type: ignore[call-overload]
    assert {r["session"] for r in seen} == {"alpha-1"}
    assert len(segments(audit_dir(home))) > 2


HOSTILE = [
    "\x1b]0;pwned\x07",
    "\u009b2J",
    "\u202etxt.sh",
    "\u200f",
    "\u061c",
    "\u200b",
    "\u2028",
    "\u2029",
    "\u00a0",
    "\u3164",
    "\ufeff",
    "\n",
]


def test_show_escapes_what_the_agent_chose(home: dict[str, str]) -> None:
    # One policy (app/text.py) for every display path: controls, C1, bidi marks, invisible
    # characters, separators and odd blanks are visible escapes, and a record is one line.
    with AuditLog(audit_dir(home)) as log:
        for n, char in enumerate(HOSTILE):
            log.append(
                Event(
                    EventKind.FILE_WRITTEN, "s1", f"/home/u/f{n}{char}.md", {"target": f"t{char}"}
                )
            )
    result = airlock(home, "audit", "show")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(HOSTILE)
    for line, char in zip(lines, HOSTILE, strict=True):
        for c in UNSAFE.findall(char):
            assert c not in line, (line, c)
            assert line.count(f"\\u{ord(c):04x}") == 2, line  # subject and detail


def test_net_lines_escape_what_the_agent_chose() -> None:
    from app.audit import AuditRecord
    from ui.commands.net import line

    for char in HOSTILE:
        record = AuditRecord(
            1,
            1.0,
            "s1",
            "net.request",
            f"evil{char}.example:443",
            {"method": "GET", "path": f"/p{char}", "reason": char},
            "",
            "",
        )
        shown = line(record)
        assert all(c not in shown for c in UNSAFE.findall(char)), shown
        assert f"\\u{ord(UNSAFE.findall(char)[0]):04x}" in shown


def test_ocsf_export_verifies_and_an_edit_to_it_is_named(
    home: dict[str, str], tmp_path: Path
) -> None:
    fill(home, 6)
    out = tmp_path / "audit.ocsf.jsonl"

    exported = airlock(home, "audit", "export", "--format", "ocsf", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "exported 6 records" in exported.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["class_uid"] for e in events] == [1001] * 6

    checked = airlock(home, "audit", "verify", str(out))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: 6 records")

    events[4]["file"]["path"] = "/home/u/innocent.md"
    out.write_text("".join(json.dumps(e) + "\n" for e in events))
    checked = airlock(home, "audit", "verify", str(out))
    assert checked.returncode == 1
    assert f"{out}:5: edited: the OCSF fields differ from the record they carry" in checked.stderr


def test_forward_without_a_destination_says_where_to_set_one(home: dict[str, str]) -> None:
    fill(home, 1)
    result = airlock(home, "audit", "forward", "--once")
    assert result.returncode == 2
    assert "nowhere to forward to: give --to, or a [forward] table in" in result.stderr
    assert "audit.toml" in result.stderr and "Traceback" not in result.stderr

    result = airlock(home, "audit", "forward", "--once", "--to", "ftp://x:1")
    assert result.returncode == 2
    assert "expected unix:/PATH, udp://HOST:PORT or tcp://HOST:PORT" in result.stderr
