"""The hash-chained audit log: writing, rotation, tampering, redaction, following."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.audit import (
    GENESIS,
    HEAD_FILE,
    AuditError,
    AuditFollower,
    AuditLog,
    AuditProblem,
    AuditRecord,
    Recorder,
    export,
    fingerprint_bytes,
    fingerprint_file,
    records,
    redact,
    segments,
    verify,
)
from app.events import Event, EventBus, EventKind

CANARY = "CANARY-7f3e1a-do-not-log"


def event(n: int, session: str = "s1") -> Event:
    return Event(EventKind.FILE_WRITTEN, session, f"/home/user/f{n}.txt", {"count": n})


def write(directory: Path, count: int, *, synced: bool = False, **options: int) -> None:
    """`count` records; `synced` syncs after each, so that a full segment (closed only once
    it is durable) is closed at the limit."""
    with AuditLog(directory, **options) as log:
        for n in range(count):
            log.append(event(n))
            if synced:
                log.sync()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_chain_from_genesis_and_verify(audit_dir: Path) -> None:
    with AuditLog(audit_dir) as log:
        first = log.append(event(1))
        second = log.append(event(2))

    assert (first.seq, first.prev) == (1, GENESIS)
    assert (second.seq, second.prev) == (2, first.hash)
    assert [r for r in records(audit_dir)] == [first, second]
    result = verify(audit_dir)
    assert (result.ok, result.records, result.head) == (True, 2, second.hash)


def test_a_reopened_log_continues_the_chain(audit_dir: Path) -> None:
    write(audit_dir, 3)
    write(audit_dir, 2)

    assert [r.seq for r in records(audit_dir) if isinstance(r, AuditRecord)] == [1, 2, 3, 4, 5]
    assert verify(audit_dir).ok


def test_rotation_chains_across_segments(audit_dir: Path) -> None:
    write(audit_dir, 50, synced=True, segment_bytes=2000)

    files = segments(audit_dir)
    assert len(files) > 3
    assert all(f.stat().st_size <= 2000 for f in files)
    first_of_second = json.loads(lines(files[1])[0])
    last_of_first = json.loads(lines(files[0])[-1])
    assert first_of_second["prev"] == last_of_first["hash"]
    assert verify(audit_dir).records == 50


def test_two_writers_share_one_chain(audit_dir: Path) -> None:
    with AuditLog(audit_dir, segment_bytes=3000) as one, AuditLog(audit_dir) as two:
        for n in range(40):
            (one if n % 3 else two).append(event(n))

    assert verify(audit_dir).records == 40


def broken(audit_dir: Path) -> AuditProblem:
    result = verify(audit_dir)
    assert not result.ok
    assert result.problem is not None
    return result.problem


def test_an_edited_byte_is_caught_at_its_line(audit_dir: Path) -> None:
    write(audit_dir, 10)
    [segment] = segments(audit_dir)
    data = bytearray(segment.read_bytes())
    at = data.index(b"/home/user/f4.txt") + len("/home/user/f")
    data[at] = ord("5")
    segment.write_bytes(bytes(data))

    problem = broken(audit_dir)

    assert (problem.file, problem.line) == (segment, 5)
    assert "edited" in problem.reason


def test_a_deleted_line_is_caught(audit_dir: Path) -> None:
    write(audit_dir, 10)
    [segment] = segments(audit_dir)
    content = lines(segment)
    del content[3]
    segment.write_bytes(b"".join(content))

    problem = broken(audit_dir)

    assert (problem.line, problem.reason) == (4, "record 4 is missing (dropped)")


def test_swapped_lines_are_caught(audit_dir: Path) -> None:
    write(audit_dir, 10)
    [segment] = segments(audit_dir)
    content = lines(segment)
    content[6], content[7] = content[7], content[6]
    segment.write_bytes(b"".join(content))

    problem = broken(audit_dir)

    assert problem.line == 7
    assert "missing" in problem.reason


def test_an_inserted_line_is_caught(audit_dir: Path) -> None:
    write(audit_dir, 10)
    [segment] = segments(audit_dir)
    content = lines(segment)
    content.insert(2, content[0])
    segment.write_bytes(b"".join(content))

    problem = broken(audit_dir)

    assert problem.line == 3
    assert "out of place" in problem.reason


def test_a_record_rewritten_with_a_valid_hash_breaks_the_chain(
    audit_dir: Path, tmp_path: Path
) -> None:
    write(audit_dir, 5)
    write(tmp_path / "forged", 3)
    [segment] = segments(audit_dir)
    content = lines(segment)
    content[2] = lines(segments(tmp_path / "forged")[0])[2]  # seq 3, its own hash fine
    segment.write_bytes(b"".join(content))

    problem = broken(audit_dir)

    assert (problem.line, problem.reason) == (
        3,
        "does not chain to the record before it: replaced or reordered",
    )


def test_a_truncated_tail_is_caught_mid_line(audit_dir: Path) -> None:
    write(audit_dir, 10)
    [segment] = segments(audit_dir)
    os.truncate(segment, segment.stat().st_size - 30)

    problem = broken(audit_dir)

    assert (problem.line, problem.reason) == (10, "truncated: the last line is incomplete")


def test_whole_records_cut_off_the_end_are_caught(audit_dir: Path) -> None:
    write(audit_dir, 10)
    [segment] = segments(audit_dir)
    segment.write_bytes(b"".join(lines(segment)[:7]))

    problem = broken(audit_dir)

    assert problem.line == 8
    assert problem.reason.startswith("truncated: the log ends at record 7")


def test_a_dropped_segment_is_caught(audit_dir: Path) -> None:
    write(audit_dir, 40, synced=True, segment_bytes=2000)
    files = segments(audit_dir)
    files[1].unlink()

    problem = broken(audit_dir)

    assert (problem.file, problem.line) == (files[2], 1)
    assert "missing (dropped)" in problem.reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json at all\n", "not a JSON record"),
        (b"\xff\xfe\n", "not a JSON record"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"seq": 1}\n', "not an audit record: no 'time'"),
        (b"[" * 100_000 + b"\n", "not a JSON record"),
    ],
)
def test_garbage_lines_get_a_clear_reason(audit_dir: Path, line: bytes, reason: str) -> None:
    write(audit_dir, 3)
    [segment] = segments(audit_dir)
    content = lines(segment)
    content[1] = line
    segment.write_bytes(b"".join(content))

    assert broken(audit_dir) == AuditProblem(segment, 2, reason)
    assert AuditProblem(segment, 2, reason) in list(records(audit_dir))


def test_an_unreadable_checkpoint_is_named(audit_dir: Path) -> None:
    write(audit_dir, 3)
    (audit_dir / HEAD_FILE).write_text("{oops")

    assert broken(audit_dir) == AuditProblem(
        audit_dir / HEAD_FILE, 1, "the head checkpoint is unreadable"
    )


def test_a_torn_record_is_cut_and_the_cut_recorded(audit_dir: Path) -> None:
    write(audit_dir, 3)
    [segment] = segments(audit_dir)
    torn = b'{"details":{},"kind":"file.wri'  # a crash mid-write
    with segment.open("ab") as file:
        file.write(torn)

    write(audit_dir, 1)

    found = [r for r in records(audit_dir) if isinstance(r, AuditRecord)]
    assert [r.kind for r in found] == ["file.written"] * 3 + ["audit.recovered", "file.written"]
    assert found[3].details["discarded"] == fingerprint_bytes(torn).to_json()
    assert verify(audit_dir).ok


def test_an_unreadable_last_record_stops_the_writer_with_a_clear_error(audit_dir: Path) -> None:
    write(audit_dir, 2)
    [segment] = segments(audit_dir)
    segment.write_bytes(segment.read_bytes() + b"garbage\n")

    with pytest.raises(AuditError, match=r"last record of .* is unreadable"):
        AuditLog(audit_dir)


def test_no_secret_or_file_content_reaches_the_log(audit_dir: Path, tmp_path: Path) -> None:
    granted = tmp_path / "granted.txt"
    granted.write_text(f"quarterly numbers {CANARY}\n")
    bus = EventBus()
    with AuditLog(audit_dir) as log:
        bus.attach(log.sink)
        bus.emit(EventKind.SESSION_OUTPUT, "s1", "agent", line=f"cat says {CANARY}")
        bus.emit(EventKind.FILE_WRITTEN, "s1", str(granted), content=granted.read_bytes())
        bus.emit(
            EventKind.GRANT_ADDED,
            "s1",
            "openai",
            headers={"Authorization": f"Bearer {CANARY}"},
            api_key=CANARY,
            request_body=CANARY.encode(),
            note="x" * 300 + CANARY,
            nested=[{"token": CANARY}],
        )

    stored = b"".join(path.read_bytes() for path in audit_dir.iterdir())
    assert CANARY.encode() not in stored
    kept = [r for r in records(audit_dir) if isinstance(r, AuditRecord)]
    assert kept[1].details["content"] == fingerprint_file(granted).to_json()
    assert verify(audit_dir).ok


def test_redaction_keeps_metadata_and_fingerprints_content() -> None:
    details = {"count": 3, "size": 12, "path": "/home/u/a", "directory": True, "token": 42}

    kept = redact(details)

    assert kept == {**details, "token": fingerprint_bytes(b"42").to_json()}


def test_fingerprint_file_reads_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 5))

    assert fingerprint_file(big) == fingerprint_bytes(big.read_bytes())


def test_export_is_a_verifiable_copy_of_the_whole_chain(audit_dir: Path, tmp_path: Path) -> None:
    write(audit_dir, 30, synced=True, segment_bytes=2000)
    out = io.BytesIO()

    assert export(audit_dir, out) == 30

    exported = tmp_path / "export.jsonl"
    exported.write_bytes(out.getvalue())
    assert verify(exported).records == 30
    content = lines(exported)
    del content[10]
    exported.write_bytes(b"".join(content))
    assert broken(exported).line == 11


def test_the_follower_sees_new_records_across_rotation(audit_dir: Path) -> None:
    write(audit_dir, 5)
    follower = AuditFollower(audit_dir)
    assert follower.poll() == []

    write(audit_dir, 40, synced=True, segment_bytes=2000)
    seen = follower.poll()

    assert [r.seq for r in seen if isinstance(r, AuditRecord)] == list(range(6, 46))
    assert follower.poll() == []


def test_the_follower_waits_for_a_log_to_appear_and_reports_bad_lines(audit_dir: Path) -> None:
    follower = AuditFollower(audit_dir)
    assert follower.poll() == []
    write(audit_dir, 2)
    [segment] = segments(audit_dir)
    with segment.open("ab") as file:
        file.write(b"junk\n")

    seen = follower.poll()

    assert [type(r) for r in seen] == [AuditRecord, AuditRecord, AuditProblem]
    assert seen[2] == AuditProblem(segment, 3, "not a JSON record")


def test_session_end_makes_the_records_durable(audit_dir: Path) -> None:
    with AuditLog(audit_dir, sync_interval=3600) as log:
        log.append(event(1))
        assert not (audit_dir / HEAD_FILE).exists()
        record = log.append(Event(EventKind.SESSION_EXITED, "s1", "s1", {"code": 0}))
        # Made durable by the syncer at once, not at the end of the hour (nor at close).
        deadline = time.monotonic() + 30
        while not (audit_dir / HEAD_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        head = json.loads((audit_dir / HEAD_FILE).read_text())

    assert head == {"seq": record.seq, "hash": record.hash, "segment": 1}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs with room for a few files only."""
    if os.getuid() != 0:
        pytest.fail("mounting a small file system takes root: run the tests as CI does")
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=4", "airlock-test", str(path)],
        check=True,
    )
    yield path / "audit"
    subprocess.run(["umount", str(path)], check=True)


def test_when_the_disk_is_full_the_recorder_counts_what_it_lost_and_says_so_once(
    small_disk: Path,
) -> None:
    heard: list[str] = []
    with AuditLog(small_disk, segment_bytes=2000) as log:  # the lock file and segment 1
        recorder = Recorder(log)
        recorder.on_failure(heard.append)
        for n in range(30):  # no inode is left for segment 2 (nor for head.json)
            recorder(event(n))
            with contextlib.suppress(AuditError):  # head.json: no inode
                log.sync()  # a full segment is closed once durable: make that now
        assert len(heard) == 1 and "cannot start a new segment" in heard[0], heard
        assert recorder.check() == heard[0]
        subprocess.run(["mount", "-o", "remount,nr_inodes=64", str(small_disk.parent)], check=True)
        assert recorder.check() is None
        recorder(event(30))
    assert verify(small_disk).problem is None
    kept = [r for r in records(small_disk) if isinstance(r, AuditRecord)]
    [gap] = [r for r in kept if r.kind == "audit.gap"]
    *written, last = [r.details["count"] for r in kept if r.kind == "file.written"]
    assert written == list(range(len(written))) and 0 < len(written) < 30
    assert gap.details["lost"] == 30 - len(written)
    assert kept[-2] is gap and last == 30


def test_an_append_never_waits_for_the_syncers_fsync(audit_dir: Path) -> None:
    """A busy disk: the syncer's fsync is held until released. Appends go on meanwhile,
    head.json names nothing the held fsync was to make durable, and an explicit sync (on
    its own thread, with its own fsyncs) moves it to the last record, where the syncer,
    released, leaves it."""
    entered, released, finished = threading.Event(), threading.Event(), threading.Event()
    gave_up: list[bool] = []

    def busy_disk(fd: int) -> None:
        if threading.current_thread().name == "audit-sync" and not finished.is_set():
            entered.set()
            gave_up.append(not released.wait(60))
            os.fsync(fd)
            finished.set()
            return
        os.fsync(fd)

    with AuditLog(audit_dir, sync_interval=3600, fsync=busy_disk) as log:
        log.append(Event(EventKind.SESSION_EXITED, "s1", "s1", {"code": 0}))
        assert entered.wait(30), "the session end did not start a sync"
        appended = [log.append(event(n)) for n in range(200)]
        assert not finished.is_set() and not gave_up  # they did not wait for it
        assert not (audit_dir / HEAD_FILE).exists()

        log.sync()
        last = {"seq": appended[-1].seq, "hash": appended[-1].hash, "segment": 1}
        assert json.loads((audit_dir / HEAD_FILE).read_text()) == last

        released.set()
        assert finished.wait(30)
    assert gave_up == [False]
    assert json.loads((audit_dir / HEAD_FILE).read_text()) == last  # not moved back
    assert verify(audit_dir).records == 201
