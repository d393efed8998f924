"""The audit forwarder, read back from a real rsyslogd on private sockets: RFC 5424 messages
that carry each record, a destination that is down loses nothing and blocks nothing, one
forwarder per log, and clear refusals of a bad configuration."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.audit import AuditLog, verify, verify_lines
from app.events import Event, EventKind
from app.forward import (
    AuditForwarder,
    Destination,
    ForwardConfig,
    ForwardError,
    load_config,
    syslog_message,
)
from app.ocsf import Origin
from tests.support import DesktopUser, profile_text

ORIGIN = Origin("desk.example", "0.1.0")
SEPARATOR = "\t|\t"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Rsyslog:
    """A real rsyslogd listening on loopback TCP and a private unix socket, writing what it
    receives (message id, structured data, message) to a file, a line per message."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.socket = directory / "log.sock"
        self.out = directory / "received.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Rsyslog:
        if shutil.which("rsyslogd") is None:
            pytest.fail("rsyslogd is missing: `sudo packaging/setup test` installs it")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "rsyslog.conf"
        config.write_text(f"""
global(workDirectory="{self.directory}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.socket}" UseSpecialParser="off" ParseHostname="on"
      UseSysTimeStamp="off")
template(name="fields" type="string"
         string="%msgid%{SEPARATOR}%hostname%{SEPARATOR}%structured-data%{SEPARATOR}%msg%\\n")
*.* action(type="omfile" file="{self.out}" template="fields")
""")
        self.process = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(config), "-i", str(self.directory / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"rsyslogd exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if self.socket.exists():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail("rsyslogd did not listen within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def received(self, count: int, timeout: float = 20) -> list[list[str]]:
        """The first `count` messages as [msgid, hostname, structured data, message]."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            if self.out.exists():
                lines = self.out.read_text(encoding="utf-8").splitlines()
                if len(lines) >= count:
                    break
            time.sleep(0.05)
        return [line.split(SEPARATOR) for line in lines]


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog", free_port()).start()
    yield server
    server.stop()


def events(count: int, start: int = 0) -> list[Event]:
    return [
        Event(EventKind.FILE_WRITTEN, "s1", f"/home/ana/notes/n{n}.md", {"size": n})
        for n in range(start, start + count)
    ]


def append(audit_dir: Path, batch: list[Event]) -> None:
    with AuditLog(audit_dir) as log:
        for event in batch:
            log.append(event)


def carried(messages: list[list[str]]) -> list[bytes]:
    # rsyslog keeps the message's UTF-8 BOM; the record is the JSON after it.
    return [fields[3].removeprefix("\ufeff").encode("ascii") for fields in messages]


def chain_holds(lines: list[bytes], tmp_path: Path) -> bool:
    numbered = ((tmp_path, number, line, True) for number, line in enumerate(lines, 1))
    return verify_lines(numbered, files=1, end=tmp_path).ok


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_each_record_arrives_as_rfc5424_with_its_chain(
    audit_dir: Path, rsyslog: Rsyslog, transport: str, tmp_path: Path
) -> None:
    append(audit_dir, events(30))
    to = f"tcp://127.0.0.1:{rsyslog.port}" if transport == "tcp" else f"unix:{rsyslog.socket}"
    forwarder = AuditForwarder(audit_dir, ForwardConfig(Destination.parse(to)), ORIGIN)
    assert forwarder.run(once=True) == 30

    messages = rsyslog.received(30)
    assert len(messages) == 30
    msgid, hostname, structured, _ = messages[0]
    assert (msgid, hostname) == ("file.written", "desk.example")
    assert '[meta sequenceId="1"]' in structured
    assert 'airlock@32473 seq="1"' in structured and 'session="s1"' in structured
    lines = carried(messages)
    local = (audit_dir / "000001.jsonl").read_bytes().splitlines()
    assert lines == local  # the very records, byte for byte: the chain checks out there too
    assert chain_holds(lines, tmp_path)


def test_ocsf_messages_carry_an_ocsf_event(audit_dir: Path, rsyslog: Rsyslog) -> None:
    append(audit_dir, events(3))
    config = ForwardConfig(Destination.parse(f"tcp://127.0.0.1:{rsyslog.port}"), "ocsf")
    AuditForwarder(audit_dir, config, ORIGIN).run(once=True)
    event = json.loads(carried(rsyslog.received(3))[2])
    assert (event["class_uid"], event["metadata"]["sequence"]) == (1001, 3)
    assert event["file"]["path"] == "/home/ana/notes/n2.md"


def test_a_dead_destination_blocks_nothing_loses_nothing_and_is_caught_up(
    audit_dir: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet: the collector is down
    config = ForwardConfig(Destination.parse(f"tcp://127.0.0.1:{port}"))
    forwarder = AuditForwarder(audit_dir, config, ORIGIN, poll=0.05, retry=(0.05, 0.2))
    forwarder.start()
    try:
        # The writer never waits for the forwarder: every record is on disk and chains.
        append(audit_dir, events(200))
        result = verify(audit_dir)
        assert result.ok and result.records == 200
        time.sleep(0.5)
        assert forwarder.sent == 0
        server = Rsyslog(tmp_path / "late", port).start()
        try:
            append(audit_dir, events(50, start=200))
            messages = server.received(250)
        finally:
            server.stop()
    finally:
        forwarder.stop()
    lines = carried(messages)
    assert len(lines) == 250
    assert lines == b"".join(p.read_bytes() for p in sorted(audit_dir.glob("*.jsonl"))).splitlines()


def test_one_forwarder_per_log_and_the_next_continues_where_it_stopped(
    audit_dir: Path, rsyslog: Rsyslog, tmp_path: Path
) -> None:
    config = ForwardConfig(Destination.parse(f"tcp://127.0.0.1:{rsyslog.port}"))
    append(audit_dir, events(10))
    first = AuditForwarder(audit_dir, config, ORIGIN, poll=0.05)
    second = AuditForwarder(audit_dir, config, ORIGIN, poll=0.05)
    first.start()
    rsyslog.received(10)
    second.start()  # another Airlock process: waits for the lock, sends nothing
    append(audit_dir, events(10, start=10))
    rsyslog.received(20)
    first.stop()
    append(audit_dir, events(5, start=20))
    messages = rsyslog.received(25)
    second.stop()
    lines = carried(messages)
    assert first.sent == 20 and second.sent == 5
    assert len(lines) == 25 and chain_holds(lines, tmp_path)


def test_a_second_forward_once_is_refused_while_one_runs(audit_dir: Path, rsyslog: Rsyslog) -> None:
    config = ForwardConfig(Destination.parse(f"tcp://127.0.0.1:{rsyslog.port}"))
    append(audit_dir, events(1))
    running = AuditForwarder(audit_dir, config, ORIGIN, poll=0.05)
    running.start()
    try:
        rsyslog.received(1)
        with pytest.raises(ForwardError, match="another Airlock process is forwarding"):
            AuditForwarder(audit_dir, config, ORIGIN).run(once=True)
    finally:
        running.stop()


def test_the_message_format_escapes_what_rfc5424_asks(audit_dir: Path) -> None:
    with AuditLog(audit_dir) as log:
        record = log.append(Event(EventKind.NET_BLOCKED, 's"]\\', "x", {}))
    message = syslog_message(record, Origin("my host", "1.0"), facility="local3")
    header, _, body = message.partition(b"\xef\xbb\xbf")
    # local3 (19) * 8 + warning (4): an attempt around the proxy is worth a warning.
    assert header.startswith(b"<156>1 ")
    assert b" my_host airlock " in header
    assert b'session="s\\"\\]\\\\"' in header
    assert body == record.line()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[forward]\nto = 'udp://127.0.0.1'\n", "the port is missing"),
        ("[forward]\nto = 'http://x:1'\n", "expected unix:/PATH, udp://HOST:PORT or tcp://"),
        ("[forward]\nto = 'unix:dev/log'\n", "a unix socket needs an absolute path"),
        ("[forward]\nto = 'unix:/dev/log'\nformat = 'cef'\n", "forward.format"),
        ("[forward]\nto = 'unix:/dev/log'\nfacilty = 'local0'\n", "forward.facilty: unknown key"),
        ("[forward\n", "not valid TOML"),
    ],
)
def test_a_bad_configuration_is_refused_naming_what_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "audit.toml").write_text(text)
    with pytest.raises(ForwardError, match=message) as caught:
        load_config(tmp_path)
    assert str(tmp_path / "audit.toml") in str(caught.value) or "forward to" in str(caught.value)


def test_no_configuration_means_no_forwarder(tmp_path: Path) -> None:
    assert load_config(tmp_path) is None
    (tmp_path / "audit.toml").write_text("# nothing yet\n")
    assert load_config(tmp_path) is None
    (tmp_path / "audit.toml").write_text("[forward]\nto = 'tcp://[::1]:6514'\n")
    config = load_config(tmp_path)
    assert config is not None and str(config.destination) == "tcp://[::1]:6514"


@pytest.mark.docker
def test_a_real_sessions_records_reach_syslog_as_they_happen(
    tester: DesktopUser, agent_image: str, rsyslog: Rsyslog, tmp_path: Path
) -> None:
    # The person's own audit.toml: `airlock run` forwards while its session runs.
    tester.mkdir(".config/airlock")
    tester.write(
        ".config/airlock/audit.toml",
        f'[forward]\nto = "tcp://127.0.0.1:{rsyslog.port}"\nformat = "ocsf"\n',
    )
    tester.write("notes/a.md", "hello\n")
    path = tester.write("agent.toml", profile_text(agent_image, ["sh", "-c", "cat a.md"]))
    result = tester.run("run", "--profile", str(path), "--grant", str(tester.base / "notes"))
    assert result.returncode == 0, result.stderr

    # No Airlock process runs any more: what arrives was sent before `airlock run` returned,
    # the session's end included.
    deadline, kinds = time.monotonic() + 20, []
    while "session.exited" not in kinds and time.monotonic() < deadline:
        kinds = [fields[0] for fields in rsyslog.received(1, timeout=1)]
        time.sleep(0.1)
    assert "session.started" in kinds and "session.exited" in kinds
    events = [json.loads(line) for line in carried(rsyslog.received(len(kinds)))]
    assert {e["class_uid"] for e in events} >= {1007}
    local = b"".join(
        p.read_bytes() for p in sorted((tester.base / ".state/airlock/audit").glob("*.jsonl"))
    ).splitlines()
    # What reached syslog is the start of the local log, record for record.
    assert [e["unmapped"]["airlock"]["record"].encode() for e in events] == local[: len(events)]
