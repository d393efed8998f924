"""The audit log: every event as an append-only, hash-chained JSON-lines record on disk.

Layout. A directory (`Dirs.audit`) of numbered segments `000001.jsonl`, `000002.jsonl`, …;
the highest number is the one being written. A segment is closed once the next record would
take it past `segment_bytes` and all it holds is durable (until then records go on past the
limit), and the next one continues the same chain. Each line is one record:

    {"details":{…},"kind":"file.written","prev":"<64 hex>","seq":7,"session":"…",
     "subject":"…","time":1718000000.25,"hash":"<64 hex>"}

The *body* is the record without "hash", serialised canonically (sorted keys, no spaces,
ASCII only); "hash" is the SHA-256 of the body's bytes and is written as the last member.
`prev` is the hash of the record before (64 zeros for record 1) and `seq` counts records
from 1 across all segments, so editing, dropping, inserting or reordering any record breaks
the chain right there. `head.json` names the last record known to be on disk (its seq and
hash, and the segment the records after it start in), so that cutting whole records off the
end is caught as well. A full rewrite of the log cannot be caught from the inside: `audit
verify` prints the head hash to keep elsewhere.

What a record holds: event metadata. Values that may be content — bytes, anything under a
key that names content or a secret (body, content, line, output, token, password, key, …) and
strings over `MAX_TEXT` characters — are stored as their fingerprint {"sha256", "size"}.

Durability (fsync policy). Each record goes to its O_APPEND segment in one write(2): once
`append` returns it is in the kernel and survives a crash of the process. `append` never
fsyncs (on a busy disk that takes hundreds of milliseconds, and it runs on the event loop): a
syncer thread per log fsyncs the segments `sync_interval` seconds (default 1 s) after the
first record not yet synced, at once after a session-ending event or when a segment is full,
then replaces `head.json` if that moves it forward. `sync()` and `close()` do the same on the
caller's thread and return when it is done. A power loss may cost the records of about the
last second, never records before the head, and never a record in the middle of the chain: a
segment is closed only once it is durable. A record torn by a crash mid-write is cut off by
the next writer, which logs an `audit.recovered` record with the cut bytes' fingerprint.

Several Airlock processes may share one log: an append holds flock(2) on `audit.lock` and
first picks up whatever the others appended or rotated, so there is always one chain. fsync
flushes a file whoever wrote it, so each syncer fsyncs from the head's segment to its own
and moves the head only forward, under flock(2) of the directory (which `append` never
takes).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from app.errors import AirlockError
from app.events import Event, EventKind

log = logging.getLogger(__name__)

GENESIS = "0" * 64
MAX_TEXT = 256
SEGMENT_BYTES = 64 * 1024 * 1024
HEAD_FILE = "head.json"
LOCK_FILE = "audit.lock"
_SEGMENT_NAME = re.compile(r"^(\d{6,})\.jsonl$")
_HASH_MEMBER = b',"hash":"'
# The suffix `,"hash":"<64 hex>"}` that closes every line.
_HASH_SUFFIX_LEN = len(_HASH_MEMBER) + 64 + 2
_CHUNK = 1024 * 1024
TORN = "truncated: the last line is incomplete"

# Words that, as part of a detail's key, mark its value as content or a secret.
_CONTENT_WORDS = frozenset(
    {
        "apikey",
        "authorization",
        "body",
        "content",
        "contents",
        "cookie",
        "credential",
        "credentials",
        "data",
        "headers",
        "key",
        "line",
        "output",
        "passphrase",
        "password",
        "payload",
        "secret",
        "stderr",
        "stdout",
        "text",
        "token",
    }
)

# Events after which the records must be on disk: the session they close is over.
_SYNC_KINDS = frozenset(
    {
        EventKind.SESSION_EXITED,
        EventKind.SESSION_OOM,
        EventKind.SESSION_TIMEOUT,
        EventKind.SESSION_SWEPT,
        EventKind.SANDBOX_REFUSED,
    }
)


class AuditError(AirlockError):
    """The audit log cannot be read or written."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the log keeps of content: its SHA-256 and its size in bytes."""

    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


def fingerprint_bytes(data: bytes) -> Fingerprint:
    return Fingerprint(hashlib.sha256(data).hexdigest(), len(data))


def fingerprint_file(path: Path) -> Fingerprint:
    """Hash a file in chunks (blocking: from the loop, call it through `asyncio.to_thread`)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Fingerprint(digest.hexdigest(), size)


def redact(details: Mapping[str, Any]) -> dict[str, Any]:
    """The details as the log may keep them: content-like values become fingerprints."""
    return {str(key): _redact_value(str(key), value, False) for key, value in details.items()}


@functools.lru_cache(maxsize=1024)  # events reuse a few dozen keys; this is the hot path
def _names_content(key: str) -> bool:
    return not _CONTENT_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", key.lower()))


def _redact_value(key: str, value: Any, inside_content: bool) -> Any:
    content = inside_content or _names_content(key)
    if value is None or isinstance(value, bool) or (not content and type(value) in (int, float)):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return fingerprint_bytes(bytes(value)).to_json()
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v, content) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v, content) for v in value]
    if isinstance(value, str) and (content or len(value) > MAX_TEXT):
        # surrogatepass: undecodable file names arrive as lone surrogates (os.fsdecode).
        return fingerprint_bytes(value.encode("utf-8", "surrogatepass")).to_json()
    if content:
        return fingerprint_bytes(_canonical(value)).to_json()
    return value


# ensure_ascii keeps lone surrogates (undecodable file names) representable as \\udcxx;
# default=str turns a stray Path or enum into its text rather than losing the record. Built
# once because json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _canonical(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("ascii")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the log, as written."""

    seq: int
    time: float
    session: str | None
    kind: str  # a str, not an EventKind: a log may hold kinds this version does not know
    subject: str
    details: Mapping[str, Any]
    prev: str
    hash: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "session": self.session,
            "kind": self.kind,
            "subject": self.subject,
            "details": dict(self.details),
            "prev": self.prev,
            "hash": self.hash,
        }

    def line(self) -> bytes:
        """The record as its line in the log (without the newline): the log's encoding is
        canonical, so the fields give back the very bytes its hash was taken over."""
        body = self.to_json()
        del body["hash"]
        return _encode(body)[0][:-1]


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """Where the log is broken (or unreadable) and why; `line` counts from 1."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of `verify`: how many records chain correctly, the last good hash, and
    the first problem if there is one."""

    records: int
    segments: int
    head: str
    problem: AuditProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _encode(body: Mapping[str, Any]) -> tuple[bytes, str]:
    """The line for a record body, and its hash."""
    data = _canonical(body)
    digest = hashlib.sha256(data).hexdigest()
    return data[:-1] + _HASH_MEMBER + digest.encode("ascii") + b'"}\n', digest


def _parse(line: bytes) -> AuditRecord | str:
    """The record on a line (without its newline), or why it is not one."""
    raw = _checked(line)
    if isinstance(raw, str):
        return raw
    return AuditRecord(
        seq=raw["seq"],
        time=float(raw["time"]),
        session=raw["session"],
        kind=raw["kind"],
        subject=raw["subject"],
        details=raw["details"],
        prev=raw["prev"],
        hash=raw["hash"],
    )


def _checked(line: bytes) -> dict[str, Any] | str:
    """The fields of the record on a line (without its newline) once its shape and its own
    hash check out, or why they do not; the chain is `verify`'s business."""
    try:
        # Decoding first is twice as fast as json.loads(bytes), which sniffs the encoding.
        raw = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, absurd nesting
        return "not a JSON record"
    if not isinstance(raw, dict):
        return "not a JSON object"
    if not _well_formed(raw):
        for key, types in _FIELDS:
            if key not in raw:
                return f"not an audit record: no {key!r}"
            if type(raw[key]) not in types:
                return f"not an audit record: {key!r} has the wrong type"
    digest: str = raw["hash"]
    suffix = line[-_HASH_SUFFIX_LEN:]
    if (
        not suffix.startswith(_HASH_MEMBER)
        or suffix[len(_HASH_MEMBER) : -2] != digest.encode("ascii", "replace")
        or hashlib.sha256(line[:-_HASH_SUFFIX_LEN] + b"}").hexdigest() != digest
    ):
        return "edited: the record does not match its hash"
    return raw


def _well_formed(raw: dict[str, Any]) -> bool:
    # One expression for the common case, a third of the cost of walking _FIELDS (which names
    # the fault when there is one). Exact types, not isinstance: a bool is no seq.
    return (
        type(raw.get("seq")) is int
        and type(raw.get("time")) in (int, float)
        and type(raw.get("session", 0)) in (str, type(None))
        and type(raw.get("kind")) is str
        and type(raw.get("subject")) is str
        and type(raw.get("details")) is dict
        and type(raw.get("prev")) is str
        and type(raw.get("hash")) is str
    )


_FIELDS: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("seq", (int,)),
    ("time", (int, float)),
    ("session", (str, type(None))),
    ("kind", (str,)),
    ("subject", (str,)),
    ("details", (dict,)),
    ("prev", (str,)),
    ("hash", (str,)),
)


def segments(directory: Path) -> list[Path]:
    """The log's segment files, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise AuditError(f"cannot read the audit log at {directory}: {e.strerror}") from e
    numbered = [(int(m[1]), name) for name in names if (m := _SEGMENT_NAME.match(name))]
    return [directory / name for _, name in sorted(numbered)]


def _segment_number(path: Path) -> int:
    match = _SEGMENT_NAME.match(path.name)
    return int(match[1]) if match else 0


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without its newline, whether it had one) for each line of a file:
    only a torn last line has none."""
    try:
        with path.open("rb") as file:
            for number, line in enumerate(file, 1):
                whole = line.endswith(b"\n")
                yield number, line[:-1] if whole else line, whole
    except OSError as e:
        raise AuditError(f"cannot read {path}: {e.strerror}") from e


def records(directory: Path) -> Iterator[AuditRecord | AuditProblem]:
    """Every record of the log in order, or a problem in place of a line that is not one."""
    for path in segments(directory):
        yield from _records_in(path)


def _records_in(path: Path) -> Iterator[AuditRecord | AuditProblem]:
    for number, line, whole in _lines(path):
        parsed = _parse(line) if whole else TORN
        yield parsed if isinstance(parsed, AuditRecord) else AuditProblem(path, number, parsed)


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    seq: int
    hash: str


def _head_position(directory: Path) -> tuple[int, int]:
    """The seq head.json names and the segment the records after it start in (1 if it does
    not say: a checkpoint written before it did)."""
    try:
        raw = json.loads((directory / HEAD_FILE).read_bytes())
    except FileNotFoundError:
        return 0, 1
    except (ValueError, RecursionError):
        return 0, 1  # unreadable: `verify` says so; the next sync writes a good one
    except OSError as e:
        raise AuditError(f"cannot read {directory / HEAD_FILE}: {e.strerror}") from e
    if not isinstance(raw, dict) or type(raw.get("seq")) is not int:
        return 0, 1
    segment = raw.get("segment")
    return raw["seq"], segment if type(segment) is int and segment > 0 else 1


def _read_checkpoint(directory: Path) -> _Checkpoint | AuditProblem | None:
    path = directory / HEAD_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuditError(f"cannot read {path}: {e.strerror}") from e
    except (ValueError, RecursionError):
        raw = None
    if (
        not isinstance(raw, dict)
        or type(raw.get("seq")) is not int
        or type(raw.get("hash")) is not str
    ):
        return AuditProblem(path, 1, "the head checkpoint is unreadable")
    return _Checkpoint(seq=raw["seq"], hash=raw["hash"])


def verify(path: Path) -> Verification:
    """Check the chain of a log directory (with its head checkpoint) or of one exported file.
    Stops at the first bad record and says which and why."""
    if path.is_dir():
        files = segments(path)
        checkpoint = _read_checkpoint(path)
        if isinstance(checkpoint, AuditProblem):
            return Verification(0, len(files), GENESIS, checkpoint)
    else:
        files, checkpoint = [path], None
    numbered = (
        (file, number, line, whole) for file in files for number, line, whole in _lines(file)
    )
    return verify_lines(
        numbered, files=len(files), end=files[-1] if files else path, checkpoint=checkpoint
    )


def verify_lines(
    lines: Iterable[tuple[Path, int, bytes | str, bool]],
    *,
    files: int,
    end: Path,
    checkpoint: _Checkpoint | None = None,
) -> Verification:
    """Check the chain of records given as (file, line number, line, whole) in order; a line
    given as a str is a problem found before the chain could be looked at (its reason)."""
    count, head = 0, GENESIS
    last_file, last_line = end, 0
    for file, number, line, whole in lines:
        if isinstance(line, str):
            return Verification(count, files, head, AuditProblem(file, number, line))
        record = _checked(line) if whole else TORN
        if not isinstance(record, str):
            fault = _chain_fault(record["seq"], record["prev"], record["hash"], count, head)
            if fault is None and checkpoint is not None and record["seq"] == checkpoint.seq:
                fault = None if record["hash"] == checkpoint.hash else _DIFFERS
            if fault is None:
                count, head = count + 1, record["hash"]
                last_file, last_line = file, number
                continue
            record = fault
        return Verification(count, files, head, AuditProblem(file, number, record))
    if checkpoint is not None and checkpoint.seq > count:
        reason = (
            f"truncated: the log ends at record {count} but {HEAD_FILE} says"
            f" {checkpoint.seq} were written"
        )
        return Verification(count, files, head, AuditProblem(last_file, last_line + 1, reason))
    return Verification(count, files, head, None)


_DIFFERS = f"differs from the record {HEAD_FILE} names: replaced"


def _chain_fault(seq: int, prev: str, digest: str, count: int, head: str) -> str | None:
    """Why a record that is whole in itself does not follow record `count` (hash `head`)."""
    expected = count + 1
    if seq == expected:
        return (
            None
            if prev == head
            else "does not chain to the record before it: replaced or reordered"
        )
    if seq == expected + 1:
        return f"record {expected} is missing (dropped)"
    if seq > expected:
        return f"records {expected}-{seq - 1} are missing (dropped)"
    return f"record {seq} is out of place (expected {expected}): inserted or reordered"


def log_lines(directory: Path) -> Iterator[tuple[bytes, bool]]:
    """Every line of the log, oldest first: (line without its newline, whether it had one)."""
    for path in segments(directory):
        for _, line, whole in _lines(path):
            yield line, whole


def parse(line: bytes) -> AuditRecord | str:
    """The record on a line (without its newline), or why it is not one."""
    return _parse(line)


def export(directory: Path, out: IO[bytes]) -> int:
    """Write the whole chain, oldest first, as one JSON-lines stream that `verify` accepts;
    return the number of lines. Lines are copied byte for byte, so the hashes still hold."""
    count = 0
    for path in segments(directory):
        for _, line, whole in _lines(path):
            out.write(line + b"\n" if whole else line)
            count += 1
    return count


class AuditLog:
    """The writer. One per process; `sink` is what to attach to the `EventBus`.

    Thread-safe. `append` costs a write(2) and never an fsync(2): under a busy disk one takes
    hundreds of milliseconds, and `append` runs on the event loop. A syncer thread (started
    on the first append, gone after `_IDLE_SECONDS` with nothing to sync) makes the records
    durable and moves the head checkpoint, without the lock `append` takes. `fsync` is a
    seam for tests (a slow disk); it is called for every fsync the log makes.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        sync_interval: float = 1.0,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._sync_interval = sync_interval
        self._fsync = fsync
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._number = 0
        self._next_segment = ""
        self._fd = -1
        self._offset = 0
        self._durable = 0  # bytes of the current segment known to be on disk
        self._seq = 0
        self._hash = GENESIS
        self._written = 0  # records this writer wrote
        self._synced = 0  # of which are durable with the head checkpoint at or past them
        self._urgent = False  # sync now, not at the end of the interval
        self._idle = False  # the syncer waits for a first record to sync
        self._stopping = False
        self._syncer: threading.Thread | None = None
        self._last_sync = time.monotonic()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise AuditError(f"cannot open the audit log at {directory}: {e.strerror}") from e
        with self._locked():
            self._catch_up()
            self._request()

    def sink(self, event: Event) -> None:
        """The bus sink: records every event, losing none."""
        self.append(event)

    def append(self, event: Event) -> AuditRecord:
        details = redact(event.details)
        with self._locked():
            self._catch_up()
            record = self._write(str(event.kind), event.session, event.subject, details, event.time)
            if event.kind in _SYNC_KINDS:
                self._urgent = True
            self._request()
        return record

    def sync(self) -> None:
        """Make everything appended so far durable and move the head checkpoint to it; returns
        when that is done (the caller's thread does the fsyncs)."""
        try:
            self._flush()
        except OSError as e:
            raise AuditError(f"cannot sync the audit log at {self.directory}: {e.strerror}") from e

    def close(self) -> None:
        """Stops the syncer and syncs what is left, on the caller's thread."""
        with self._wake:
            if self._lock_fd < 0:
                return
            self._stopping = True
            self._wake.notify_all()
            syncer = self._syncer
        if syncer is not None:
            syncer.join()
        try:
            self._flush()
        except (OSError, AuditError) as e:
            log.warning("cannot sync the audit log at %s: %s", self.directory, e)
        with self._locked():
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        os.close(self._lock_fd)
        self._lock_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The syncer: everything here runs without the lock `append` takes, but for moments.

    def _syncing(self) -> None:
        while True:
            with self._wake:
                idle_since = time.monotonic()
                while True:
                    now = time.monotonic()
                    if self._stopping or (
                        self._written == self._synced and now - idle_since >= _IDLE_SECONDS
                    ):
                        self._syncer = None
                        return
                    if self._written > self._synced:
                        self._idle = False
                        left = self._last_sync + self._sync_interval - now
                        if self._urgent or left <= 0:
                            break
                        self._wake.wait(left)
                    else:
                        self._idle = True
                        self._wake.wait(_IDLE_SECONDS - (now - idle_since))
                self._urgent = False
                self._last_sync = time.monotonic()
            try:
                self._flush()
            except (OSError, AuditError) as e:
                # The records are written (in the kernel); the head checkpoint follows at the
                # next sync that can be made.
                log.warning("cannot sync the audit log at %s: %s", self.directory, e)

    def _flush(self) -> None:
        """fsync what this writer wrote, then move the head checkpoint to it if that is
        forward. fsync flushes whatever was written before it began, so `append` may go on
        meanwhile; the head names a record only once every segment up to it is durable."""
        with self._wake:
            if self._fd < 0 or self._written == self._synced:
                return
            written, seq, digest, number = self._written, self._seq, self._hash, self._number
            fd = os.dup(self._fd)
        try:
            size = os.fstat(fd).st_size
            covered, first = _head_position(self.directory)
            if seq > covered:
                # The records after the head are in its segment and the ones after it.
                for older in range(first, number):
                    self._fsync_path(self._path(older), os.O_RDONLY)
                self._fsync(fd)
                if first < number:  # the new segments' names
                    self._fsync_path(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(fd)
        with self._wake:
            if self._number == number:  # the segment may be closed now (a full disk or not)
                self._durable = max(self._durable, size)
        if seq > covered:
            self._move_head(seq, digest, number)
        with self._wake:
            self._synced = max(self._synced, written)

    def _move_head(self, seq: int, digest: str, number: int) -> None:
        """Replace head.json if it is behind `seq`. Writers serialise on a flock of the
        directory, not on audit.lock: `append` never waits for these fsyncs."""
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            try:
                moved = seq > _head_position(self.directory)[0]
                if moved:
                    head = self.directory / HEAD_FILE
                    temporary = head.with_suffix(".tmp")
                    checkpoint = {"seq": seq, "hash": digest, "segment": number}
                    temporary.write_bytes(_canonical(checkpoint))
                    self._fsync_path(temporary, os.O_RDONLY)
                    temporary.replace(head)
            finally:
                fcntl.flock(directory, fcntl.LOCK_UN)
            if moved:  # the rename: either head is durable-safe, so outside the lock
                self._fsync(directory)
        finally:
            os.close(directory)

    def _fsync_path(self, path: Path, flags: int) -> None:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    # Everything below runs with both locks held.

    def _locked(self) -> _Locked:
        if self._lock_fd < 0:
            raise AuditError(f"the audit log at {self.directory} is closed")
        return _Locked(self._lock, self._lock_fd)

    def _request(self) -> None:
        """Have the syncer make what was written durable (at once if urgent)."""
        if self._written == self._synced:
            return
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._syncing, name="audit-sync", daemon=True)
            self._syncer.start()
        elif self._urgent or self._idle:
            self._idle = False
            self._wake.notify()

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:06d}.jsonl"

    def _catch_up(self) -> None:
        """Follow what other processes did since our last append: rotation, then records."""
        if self._fd < 0 or os.path.exists(self._next_segment):
            files = segments(self.directory)
            if not files:
                self._open(1, create=True)
                return
            self._open(_segment_number(files[-1]), create=False)
            self._load_head()
        elif os.fstat(self._fd).st_size != self._offset:
            self._load_head()

    def _open(self, number: int, *, create: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1  # not a stale number: a failed open must not leave one to write to
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            self._fd = os.open(self._path(number), flags, 0o600)
        except OSError as e:
            raise AuditError(f"cannot open {self._path(number)}: {e.strerror}") from e
        if number != self._number:
            self._durable = 0  # (the same segment, opened again after an error, keeps it)
        self._number = number
        self._next_segment = os.fspath(self._path(number + 1))
        self._offset = os.fstat(self._fd).st_size

    def _load_head(self) -> None:
        """Take seq and hash from the newest complete record; cut a torn tail off first."""
        path = self._path(self._number)
        self._offset = os.fstat(self._fd).st_size
        try:
            with path.open("rb") as file:
                tail, start = _last_line(file, self._offset)
                torn = b""
                if tail and not tail.endswith(b"\n"):
                    torn = tail
                    os.ftruncate(self._fd, start)
                    self._offset = start
                    log.warning("cut %d torn bytes off the end of %s", len(torn), path)
                    tail, _ = _last_line(file, start)
            number = self._number
            while not tail and number > 1:
                # The newest segment is empty (made just before a crash): the chain goes on
                # from the last record of the one before.
                number -= 1
                path = self._path(number)
                with path.open("rb") as file:
                    tail, _ = _last_line(file, os.fstat(file.fileno()).st_size)
        except OSError as e:
            raise AuditError(f"cannot read {path}: {e.strerror}") from e
        if tail:
            record = _parse(tail.removesuffix(b"\n"))
            if isinstance(record, str):
                raise AuditError(
                    f"the last record of {path} is unreadable ({record}); see `airlock audit"
                    " verify`, and move the audit directory away to start a new log"
                )
            self._seq, self._hash = record.seq, record.hash
        else:
            self._seq, self._hash = 0, GENESIS
        if torn:
            fingerprint = fingerprint_bytes(torn)
            self._write(
                str(EventKind.AUDIT_RECOVERED),
                None,
                str(path),
                {"discarded": fingerprint.to_json()},
                time.time(),
            )
            self._urgent = True

    def _write(
        self,
        kind: str,
        session: str | None,
        subject: str,
        details: dict[str, Any],
        when: float,
    ) -> AuditRecord:
        body = {
            "seq": self._seq + 1,
            "time": when,
            "session": session,
            "kind": kind,
            "subject": subject,
            "details": details,
            "prev": self._hash,
        }
        line, digest = _encode(body)
        if self._offset and self._offset + len(line) > self._segment_bytes:
            if self._durable >= self._offset:
                # Only once the segment is durable: a record of the next one on disk before
                # the end of this one would leave a hole in the chain after a power loss.
                try:
                    self._open(self._number + 1, create=True)
                except AuditError as e:
                    raise AuditError(f"cannot start a new segment in {self.directory}: {e}") from e
            else:
                self._urgent = True  # this record goes past the limit; the next need not
        try:
            written = os.write(self._fd, line)
        except OSError as e:
            raise AuditError(f"cannot write to {self._path(self._number)}: {e.strerror}") from e
        if written != len(line):
            # A short write (disk full) leaves a torn line: cut it so the chain stays whole.
            os.ftruncate(self._fd, self._offset)
            raise AuditError(f"cannot write to {self._path(self._number)}: disk full")
        self._offset += written
        self._seq += 1
        self._hash = digest
        self._written += 1
        return AuditRecord(
            seq=self._seq,
            time=when,
            session=session,
            kind=kind,
            subject=subject,
            details=details,
            prev=str(body["prev"]),
            hash=digest,
        )


# How long the syncer thread waits for more to sync before it ends.
_IDLE_SECONDS = 30.0

# While the log cannot be written, how long events are only counted before a write is tried
# again (`Recorder.check`, which the supervisor calls, tries at once).
RETRY_SECONDS = 0.2


class Recorder:
    """The bus sink that writes every event to an `AuditLog`, and says so when it cannot.

    An event that cannot be written (the disk is full, the directory is gone) is counted,
    not kept: memory is no place for a log that must survive a crash. The listeners hear of
    the failure once; the supervisor stops its sessions, since nothing may run unrecorded.
    The first write that works again is an `audit.gap` record with the count, the time span
    and the reason, so the log itself says what it is missing."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._lost = 0
        self._since = 0.0
        self._reason = ""
        self._retry_at = 0.0  # while failing, events before this are counted, not tried

    def on_failure(self, listener: Callable[[str], None]) -> None:
        """Calls `listener(reason)` when a write fails after the ones before it worked."""
        self._listeners.append(listener)

    def __call__(self, event: Event) -> None:
        with self._lock:
            failing = self._lost > 0
            if failing and time.monotonic() < self._retry_at:
                # A full disk fails every write: trying each of a burst of events again
                # (thousands of output lines) would hold the caller's loop for nothing.
                self._lost += 1
                return
            try:
                self._close_gap()
                self.log.append(event)
                return
            except AuditError as e:
                if not self._lost:
                    self._since = event.time
                self._lost += 1
                self._reason = str(e)
                self._retry_at = time.monotonic() + RETRY_SECONDS
        if not failing:
            log.error("the audit log cannot be written: %s", self._reason)
            for listener in tuple(self._listeners):
                listener(self._reason)

    def check(self) -> str | None:
        """Why the log cannot be written, if its last write failed and it still cannot
        (the missing events' `audit.gap` record is tried now); None if it can."""
        with self._lock:
            try:
                self._close_gap()
            except AuditError as e:
                self._reason = str(e)
                return self._reason
            return None

    def _close_gap(self) -> None:
        if not self._lost:
            return
        self.log.append(
            Event(
                EventKind.AUDIT_GAP,
                None,
                str(self.log.directory),
                {
                    "lost": self._lost,
                    "since": self._since,
                    "until": time.time(),
                    "reason": self._reason,
                },
            )
        )
        self._lost = 0


class _Locked:
    """Holds the in-process lock and the cross-process flock for one operation."""

    __slots__ = ("_fd", "_lock")

    def __init__(self, lock: threading.Lock, fd: int) -> None:
        self._lock = lock
        self._fd = fd

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()


def _last_line(file: IO[bytes], size: int) -> tuple[bytes, int]:
    """The last line of the first `size` bytes of a file (with its newline, if it has one)
    and where it starts."""
    end = size
    start = size
    block = b""
    while start > 0:
        step = min(64 * 1024, start)
        start -= step
        file.seek(start)
        block = file.read(step) + block
        cut = block.rfind(b"\n", 0, len(block) - 1)
        if cut >= 0:
            return block[cut + 1 :], start + cut + 1
    file.seek(0)
    return file.read(end), 0


class AuditFollower:
    """Reads records as they are appended, by this process or any other, across rotation.

    Starts at the current end of the log (or its beginning with `from_start`); call `poll`
    whenever convenient — it never blocks for long and returns what is new.
    """

    def __init__(self, directory: Path, *, from_start: bool = False) -> None:
        self.directory = directory
        self._path: Path | None = None
        self._offset = 0
        self._line = 1
        self._partial = b""
        files = segments(directory)
        if files and not from_start:
            # Start after the last whole line, counting lines to name problems by number.
            self._path = files[-1]
            with self._path.open("rb") as file:
                position = 0
                while chunk := file.read(_CHUNK):
                    if (cut := chunk.rfind(b"\n")) >= 0:
                        self._offset = position + cut + 1
                    self._line += chunk.count(b"\n")
                    position += len(chunk)

    def poll(self) -> list[AuditRecord | AuditProblem]:
        found: list[AuditRecord | AuditProblem] = []
        while True:
            if self._path is None:
                files = segments(self.directory)
                if not files:
                    return found
                self._path = files[0]
            number = _segment_number(self._path)
            later = [p for p in segments(self.directory) if _segment_number(p) > number]
            found.extend(self._read_new())
            if not later:
                return found
            if self._partial:
                found.append(AuditProblem(self._path, self._line, TORN))
            self._path, self._offset, self._line, self._partial = later[0], 0, 1, b""

    def _read_new(self) -> list[AuditRecord | AuditProblem]:
        assert self._path is not None
        try:
            with self._path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < self._offset:
                    # Cut back by a writer recovering a torn tail: resume at the new end.
                    self._offset, self._partial = size, b""
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise AuditError(f"cannot read {self._path}: {e.strerror}") from e
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        found: list[AuditRecord | AuditProblem] = []
        for line in lines:
            parsed = _parse(line)
            found.append(
                parsed
                if isinstance(parsed, AuditRecord)
                else AuditProblem(self._path, self._line, parsed)
            )
            self._line += 1
        return found
