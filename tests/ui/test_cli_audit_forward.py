"""`airlock audit export --format ocsf` and `airlock audit forward` through the real command
line, read back from a real `rsyslogd` started on a private socket: every record arrives once,
in order, as RFC 5424 with structured data and an OCSF event carrying the record, so the chain
is checked from what the collector got; a collector that is away holds nothing up and loses
nothing — the local log goes on, and the records wait and go when it is back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.audit import AuditLog, verify
from app.events import Event, EventKind

AIRLOCK = Path(sys.executable).with_name("airlock")
SD = "airlock@32473"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    return env | {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}


def audit_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) / "airlock" / "audit"


def airlock(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AIRLOCK), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def append(env: dict[str, str], first: int, count: int) -> None:
    with AuditLog(audit_dir(env)) as log:
        for i in range(first, first + count):
            log.append(Event(EventKind.NET_REQUEST, "s1", "files.test:80", {
                "method": "GET", "host": "files.test", "port": 80, "path": f"/{i}",
                "status": 200, "bytes_up": i, "bytes_down": 2 * i, "note": 'q"u]o\\te'}))


class Rsyslog:
    """rsyslogd in the foreground with one input, a unix socket, and one output file of
    the fields this test reads: facility, severity, app, msgid, structured data, message."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "log.sock"
        self.out = directory / "out.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Rsyslog:
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        assert Path(binary).exists(), "rsyslogd is missing (Debian: rsyslog)"
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "rsyslog.conf"
        config.write_text(
            f'global(workDirectory="{self.directory}" maxMessageSize="256k")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            f'input(type="imuxsock" Socket="{self.socket}" UseSpecialParser="off" '
            'ParseHostname="on")\n'
            'template(name="t" type="string" string="%syslogfacility% %syslogseverity% '
            '%app-name% %msgid% %structured-data%\\t%msg%\\n")\n'
            f'*.* action(type="omfile" file="{self.out}" template="t")\n')
        self.process = subprocess.Popen(
            [binary, "-n", "-f", str(config), "-i", str(self.directory / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "rsyslogd did not open its socket"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
            self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def messages(self, count: int, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            text = self.out.read_text() if self.out.exists() else ""
            got = [line for line in text.splitlines() if line]
            if len(got) >= count or time.monotonic() > deadline:
                return [(head, json.loads(body.lstrip("\ufeff ")))
                        for head, _, body in (line.partition("\t") for line in got)]
            time.sleep(0.05)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rs")
    try:
        yield server
    finally:
        server.stop()


def check_chain(events: list[dict[str, Any]], into: Path) -> int:
    """Writes the events as an export would be, and verifies the chain they carry."""
    into.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = verify(into)
    assert result.ok, result.problem
    return result.records


def test_ocsf_export_through_the_command_line_verifies(home: dict[str, str],
                                                        tmp_path: Path) -> None:
    append(home, 1, 5)
    out = tmp_path / "audit.ocsf.jsonl"
    exported = airlock(home, "audit", "export", "--format", "ocsf", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "exported 5 records as OCSF events" in exported.stderr
    assert all(json.loads(line)["class_uid"] == 4002 for line in out.read_text().splitlines())
    checked = airlock(home, "audit", "verify", str(out))
    assert checked.returncode == 0 and "ok: 5 records" in checked.stdout, checked.stderr


def test_forwarded_records_arrive_once_in_order_and_wait_while_the_collector_is_away(
        home: dict[str, str], rsyslog: Rsyslog, tmp_path: Path) -> None:
    target = f"unix:{rsyslog.socket}"
    append(home, 1, 4)
    # No collector yet: nothing is taken, nothing is lost, the log goes on.
    away = airlock(home, "audit", "forward", "--to", target, "--once")
    assert away.returncode == 1 and "4 wait for the next run" in away.stderr, away.stderr
    append(home, 5, 3)
    assert verify(audit_dir(home)).records == 7
    rsyslog.start()
    sent = airlock(home, "audit", "forward", "--to", target, "--once")
    assert sent.returncode == 0 and "forwarded 7 records" in sent.stderr, sent.stderr
    # Gone again in the middle: the next records wait; back, they go, none twice.
    rsyslog.stop()
    append(home, 8, 2)
    assert airlock(home, "audit", "forward", "--to", target, "--once").returncode == 1
    rsyslog.start()
    assert airlock(home, "audit", "forward", "--to", target, "--once").returncode == 0
    got = rsyslog.messages(9)
    heads = [head.split(" ", 4) for head, _ in got]
    assert [h[:4] for h in heads] == [["13", "6", "airlock", "net.request"]] * 9
    assert [e["metadata"]["sequence"] for _, e in got] == list(range(1, 10))
    assert f'[{SD} seq="3" kind="net.request" session="s1" hash="' in got[2][0]
    assert check_chain([e for _, e in got], tmp_path / "collected.jsonl") == 9
    assert json.loads(got[0][1]["unmapped"]["airlock_record"])["details"]["note"] == \
        'q"u]o\\te'


def test_the_live_forwarder_sends_records_as_they_are_written(
        home: dict[str, str], rsyslog: Rsyslog, tmp_path: Path) -> None:
    rsyslog.start()
    append(home, 1, 2)
    forwarder = subprocess.Popen(
        [str(AIRLOCK), "audit", "forward", "--to", f"unix:{rsyslog.socket}"], env=home,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert len(rsyslog.messages(2)) == 2
        append(home, 3, 3)
        got = rsyslog.messages(5)
    finally:
        forwarder.send_signal(signal.SIGTERM)
        forwarder.wait(10)
    assert [e["metadata"]["sequence"] for _, e in got] == [1, 2, 3, 4, 5]
    assert check_chain([e for _, e in got], tmp_path / "collected.jsonl") == 5
