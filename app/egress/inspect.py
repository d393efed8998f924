"""What an upload carries: secret-looking tokens and content of the session's granted files.

Pure and streaming: `UploadInspector.feed` takes the body chunk by chunk, in bounded memory,
and reports findings as they appear, so the proxy can hold a body before it leaves and
re-check what streams after an approval.

Secret patterns are the formats with a recognisable shape: PEM/OpenSSH private keys, AWS
access key ids, GitHub, GitLab, Slack, Stripe, Google, OpenAI and Anthropic keys, JWTs.
A finding names the kind and the offset, never the matched text.

Granted content. Why not the SHA-256 of fixed-size chunks? A chunk of a file inside a body
sits at any offset, so finding it means a rolling hash over every byte — in Python, seconds
per megabyte — and a text file pasted into a JSON body is escaped (`\\n`, `\\"`), so its bytes
are not there at all. Instead the index holds the hashes of each file's *pieces*: the runs
between newlines (content-defined: in binary data newline bytes fall at random places too),
stripped, and kept if at least `MIN_PIECE` bytes long. A body is split the same way after
undoing JSON string escapes, with `bytes.split` at C speed. A file counts as found when
`MATCHES_TO_FIND` of its distinct pieces (or all of them, if it has fewer) are in the body,
or when the whole body is the file (SHA-256). Bounded: at most `MAX_FILES` files,
`MAX_FILE_BYTES` read of each, `MAX_PIECES` pieces in all. The hashes are Python's per-process
`hash`: the index lives in memory only and is never written anywhere.
Request heads (`HeadScan`): the path, the query, header values and cookies of a request,
and a host name's labels under a wildcard rule, carry data as well as a body does. Each part
is inspected as it is and as URL-decoding, base64 (standard or URL-safe, at each alignment)
and hex would read its runs (`decoded_views`), with the same patterns and piece hashes; the
pieces of a granted file found in heads add up over the session, so a file sent one line a
request is still found.
Known gaps: compressed or reflowed content, and bodies re-encoded as base64 or hex, are not
recognised.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

log = logging.getLogger(__name__)

MIN_PIECE = 24
MATCHES_TO_FIND = 3
MAX_FILES = 20_000
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_PIECES = 2_000_000
MAX_CARRY = 64 * 1024  # the longest piece kept across chunk boundaries
PREVIEW_BYTES = 256
PATTERN_OVERLAP = 4096  # the longest secret pattern match that may span two chunks

SECRET_PATTERNS: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("private-key", re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("aws-access-key", re.compile(rb"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")),
    ("github-token", re.compile(rb"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})")),
    ("gitlab-token", re.compile(rb"\bglpat-[A-Za-z0-9_-]{20,}")),
    ("slack-token", re.compile(rb"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("stripe-key", re.compile(rb"\b[sr]k_live_[A-Za-z0-9]{20,}")),
    ("google-api-key", re.compile(rb"\bAIza[0-9A-Za-z_-]{35}")),
    ("anthropic-key", re.compile(rb"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    ("openai-key", re.compile(rb"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    ("jwt", re.compile(rb"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)
# Runs worth decoding: long enough to hold a token (a 20-byte key is 28 in base64, 40 in hex).
_BASE64_RUNS = (re.compile(rb"[A-Za-z0-9+/]{16,}"), re.compile(rb"[A-Za-z0-9_-]{16,}"))
_BASE32_RUN = re.compile(rb"[A-Za-z2-7]{16,}")
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{24,}")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
# What every match of each pattern contains: found with `in` (C speed), they say which
# patterns are worth a search at all. A request head's parts are mostly without any.
SECRET_MARKERS: dict[str, tuple[bytes, ...]] = {
    "private-key": (b"PRIVATE KEY",),
    "aws-access-key": (b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA"),
    "github-token": (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_"),
    "gitlab-token": (b"glpat-",),
    "slack-token": (b"xox",),
    "stripe-key": (b"k_live_",),
    "google-api-key": (b"AIza",),
    "anthropic-key": (b"sk-ant-",),
    "openai-key": (b"sk-",),
    "jwt": (b"eyJ",),
}
_MARKER = re.compile(b"|".join(re.escape(m) for ms in SECRET_MARKERS.values() for m in ms))
_MARKED = {m: kind for kind, ms in SECRET_MARKERS.items() for m in ms}
_JSON_UNESCAPES = (
    (b"\\\\", b"\x00"),
    (b'\\"', b'"'),
    (b"\\/", b"/"),
    (b"\\t", b"\t"),
    (b"\\r", b"\r"),
    (b"\x00", b"\\"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """Something an upload carries. `label` names the pattern or the granted file."""

    kind: str  # a pattern name, or "granted-file"
    label: str
    offset: int  # where in the body it was seen (the piece's end for granted files)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "label": self.label, "offset": self.offset}


def findings_text(findings: Sequence[Finding]) -> str:
    """What a refusal says of the findings: their kinds, never what was found."""
    if not findings:
        return ""
    return "; it carries: " + ", ".join(sorted({f.kind for f in findings}))


@dataclass(frozen=True, slots=True)
class GrantedContent:
    """The fingerprints of the granted files: whole-file SHA-256 and piece hashes."""

    pieces: dict[int, tuple[int, ...]] = field(default_factory=dict)  # hash -> file numbers
    files: tuple[str, ...] = ()  # file number -> path as the user knows it
    piece_counts: tuple[int, ...] = ()  # file number -> distinct pieces
    digests: dict[str, int] = field(default_factory=dict)  # sha256 -> file number

    @classmethod
    def build(cls, files: Iterable[tuple[str, Path]]) -> GrantedContent:
        """Index (label, path) pairs. Blocking file I/O: call it through a thread."""
        pieces: dict[int, list[int]] = {}
        names: list[str] = []
        counts: list[int] = []
        digests: dict[str, int] = {}
        total = 0
        for label, path in files:
            if len(names) >= MAX_FILES or total >= MAX_PIECES:
                log.info("granted content index is full; later files are not indexed")
                break
            try:
                data = _read_regular(path)
            except OSError as e:
                log.debug("cannot index %s: %s", path, e)
                continue
            if not data:
                continue
            number = len(names)
            names.append(label)
            digests.setdefault(hashlib.sha256(data).hexdigest(), number)
            own = {hash(p) for p in _pieces(data)}
            counts.append(len(own))
            total += len(own)
            for value in own:
                pieces.setdefault(value, []).append(number)
        return cls({k: tuple(v) for k, v in pieces.items()}, tuple(names), tuple(counts), digests)

    @classmethod
    def of_tree(cls, root: Path, shown_as: Path) -> GrantedContent:
        """Index every regular file below `root` (a session's view), labelled by the path
        it mirrors below `shown_as`. Does not follow symlinks."""
        found: list[tuple[str, Path]] = []
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory) / name
                found.append((str(shown_as / path.relative_to(root)), path))
                if len(found) >= MAX_FILES:
                    return cls.build(found)
        return cls.build(found)


def _read_regular(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(MAX_FILE_BYTES)
    finally:
        os.close(fd)


def _pieces(data: bytes) -> list[bytes]:
    return [p for p in (raw.strip() for raw in data.split(b"\n")) if len(p) >= MIN_PIECE]


def _unescape(data: bytes) -> bytes:
    """Undo JSON string escapes the cheap way; `\\n` became a split point already."""
    if b"\\" not in data:
        return data
    for old, new in _JSON_UNESCAPES:
        data = data.replace(old, new)
    return data


class UploadInspector:
    """Feeds on one body; knows its size, SHA-256, first bytes and findings so far."""

    def __init__(self, granted: GrantedContent | None = None) -> None:
        self._granted = granted
        self._sha = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.findings: list[Finding] = []
        self._pattern_tail = b""
        self._piece_carry = b""
        self._seen_kinds: set[str] = set()
        self._matched: dict[int, set[int]] = {}
        self._found_files: set[int] = set()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def feed(self, chunk: bytes) -> list[Finding]:
        """Inspect the next part of the body; returns the findings it added."""
        if not chunk:
            return []
        start = self.size
        self._sha.update(chunk)
        self.size += len(chunk)
        if len(self.head) < PREVIEW_BYTES:
            self.head += chunk[: PREVIEW_BYTES - len(self.head)]
        new = self._patterns(chunk, start)
        if self._granted is not None and self._granted.pieces:
            new += self._granted_pieces(chunk, final=False)
        self.findings += new
        return new

    def finish(self) -> list[Finding]:
        """The body ended: check the last piece and the whole-body digest."""
        new: list[Finding] = []
        if self._granted is not None:
            new += self._granted_pieces(b"", final=True)
            number = self._granted.digests.get(self.sha256)
            if number is not None and number not in self._found_files:
                self._found_files.add(number)
                new.append(Finding("granted-file", self._granted.files[number], self.size))
        self.findings += new
        return new

    def _patterns(self, chunk: bytes, start: int) -> list[Finding]:
        window = self._pattern_tail + chunk
        base = start - len(self._pattern_tail)
        found = []
        for kind, pattern in SECRET_PATTERNS:
            if kind in self._seen_kinds:
                continue  # one finding per kind is enough to hold the body
            match = pattern.search(window)
            if match:
                self._seen_kinds.add(kind)
                found.append(Finding(kind, kind, base + match.start()))
        self._pattern_tail = window[-PATTERN_OVERLAP:]
        return found

    def _granted_pieces(self, chunk: bytes, *, final: bool) -> list[Finding]:
        assert self._granted is not None
        data = self._piece_carry + chunk
        if final:
            complete, self._piece_carry = data, b""
        else:
            cut = data.rfind(b"\n")
            complete, self._piece_carry = (data[:cut], data[cut + 1 :]) if cut >= 0 else (b"", data)
            if len(self._piece_carry) > MAX_CARRY:
                self._piece_carry = b""  # a piece this long is never matched whole anyway
        if not complete:
            return []
        complete = _unescape(complete.replace(b"\\n", b"\n"))
        found = []
        index = self._granted
        for piece in _pieces(complete):
            for number in index.pieces.get(hash(piece), ()):
                if number in self._found_files:
                    continue
                matched = self._matched.setdefault(number, set())
                matched.add(hash(piece))
                if len(matched) >= min(MATCHES_TO_FIND, index.piece_counts[number]):
                    self._found_files.add(number)
                    found.append(Finding("granted-file", index.files[number], self.size))
        return found


def preview(data: bytes, limit: int = PREVIEW_BYTES) -> str:
    """The first bytes of a body, safe to show: printable ASCII as is, anything else
    (control characters, escapes, non-ASCII) as \\xNN, so nothing can drive a terminal or
    disguise itself in a dialog."""
    out = []
    for byte in data[:limit]:
        if 32 <= byte < 127 and byte != 0x5C:
            out.append(chr(byte))
        elif byte == 0x0A:
            out.append("\\n")
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


EXCERPT_CONTEXT = 80  # bytes shown on either side of a finding
EXCERPT_MATCH = 120  # the most of a finding itself that is marked
MAX_EXCERPTS = 10
_TOKEN_END = re.compile(rb"[\s\"',;&<>]")


def excerpts(data: bytes, findings: Sequence[Finding]) -> list[dict[str, object]]:
    """The body around each finding, for the upload dialog to scroll to and mark: what is
    before it, the finding itself (a secret pattern's match; up to the next separator for
    others; for a granted file, the stretch before the offset where it was recognised) and
    what follows — each part escaped as `preview` does. Only for the dialog: the log keeps
    findings without their text."""
    out: list[dict[str, object]] = []
    for number, finding in enumerate(findings[:MAX_EXCERPTS]):
        at = finding.offset
        if not 0 <= at <= len(data):
            continue
        if finding.kind == "granted-file":
            start, end = max(0, at - EXCERPT_MATCH), at
        else:
            start, end = at, _match_end(data, at, finding.kind)
        before = max(0, start - EXCERPT_CONTEXT)
        out.append(
            {
                "finding": number,
                "offset": start,
                "before": preview(data[before:start], EXCERPT_CONTEXT),
                "match": preview(data[start:end], EXCERPT_MATCH),
                "after": preview(data[end : end + EXCERPT_CONTEXT], EXCERPT_CONTEXT),
            }
        )
    return out


def _match_end(data: bytes, at: int, kind: str) -> int:
    for name, pattern in SECRET_PATTERNS:
        if name == kind and (match := pattern.match(data, at)) is not None:
            return min(match.end(), at + EXCERPT_MATCH)
    stop = _TOKEN_END.search(data, at, at + EXCERPT_MATCH)
    return max(at + 1, stop.start()) if stop else min(len(data), at + EXCERPT_MATCH)


def mask_secrets(text: str) -> str:
    """Text for the log with anything secret-shaped replaced by its kind."""
    data = text.encode("utf-8", "surrogatepass")
    for kind, pattern in SECRET_PATTERNS:
        data = pattern.sub(f"<{kind}>".encode(), data)
    return data.decode("utf-8", "surrogatepass")


def _encoded_markers() -> re.Pattern[bytes]:
    """The markers as base64 (standard and URL-safe, at the three offsets a marker may have
    in its quantum: the characters that depend on the marker alone) and as hex."""
    forms: set[bytes] = set()
    for markers in SECRET_MARKERS.values():
        for marker in markers:
            for shift in range(3):
                encoded = base64.b64encode(bytes(shift) + marker)
                start, end = -(-4 * shift // 3), 4 * (shift + len(marker)) // 3
                forms.add(encoded[start:end])
                forms.add(encoded[start:end].translate(bytes.maketrans(b"+/", b"-_")))
            forms.add(marker.hex().encode())
            forms.add(marker.hex().upper().encode())
    return re.compile(b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


_ENCODED_MARKER = _encoded_markers()
MIN_DECODED_PIECE = 32  # a run shorter than this cannot hold a piece (`MIN_PIECE` bytes)


def decoded_views(
    data: bytes, *, base32: bool = False, every: bool = False
) -> list[tuple[str, bytes]]:
    """`data` as it is and as URL-decoding, base64 (and with `base32`, base32: host names
    have one case) and hex read its runs, each with how it was read ("", "url", "base64",
    "url+base64", …). A run is decoded if it holds a secret's marker in encoded form, or
    with `every` (granted content is looked for) if it is long enough to hold a piece.
    Unbounded by count on purpose (a cap would let padding hide a secret): what is read is a
    request head, which the proxy bounds (`ProxySettings.max_head_bytes`), or a host name."""
    views = [("", data)]
    if b"%" in data or b"+" in data:
        decoded = unquote_to_bytes(data.replace(b"+", b" "))
        if decoded != data:
            views.append(("url", decoded))
    out = list(views)
    runs: set[bytes] = set()
    for how, view in views:
        prefix = f"{how}+" if how else ""
        for pattern in _BASE64_RUNS:
            for match in pattern.finditer(view):
                run = match.group()
                if run in runs:
                    continue
                runs.add(run)
                if not ((every and len(run) >= MIN_DECODED_PIECE) or _ENCODED_MARKER.search(run)):
                    continue
                out += _base64_readings(prefix, run)
                for hex_run in _HEX_RUN.finditer(run):
                    text = hex_run.group()
                    for shift in range(2):
                        part = text[shift : len(text) - (len(text) - shift) % 2]
                        out.append((prefix + "hex", bytes.fromhex(part.decode("ascii"))))
        if base32:
            for match in _BASE32_RUN.finditer(view):
                run = match.group().upper()
                for shift in range(8):
                    part = run[shift : len(run) - (len(run) - shift) % 8]
                    if len(part) < 16:
                        break
                    with contextlib.suppress(binascii.Error, ValueError):
                        out.append((prefix + "base32", base64.b32decode(part)))
    return out


def _base64_readings(prefix: str, run: bytes) -> list[tuple[str, bytes]]:
    """A run read as base64 from each of the four places a quantum may start."""
    run = run.translate(_URLSAFE)
    out = []
    for shift in range(4):
        part = run[shift:]
        if len(part) % 4 == 1:
            part = part[:-1]  # one character cannot end a quantum
        part += b"=" * (-len(part) % 4)
        if len(part) < 16:
            break
        with contextlib.suppress(binascii.Error):
            out.append((prefix + "base64", binascii.a2b_base64(part)))
    return out


class HeadScan:
    """Findings in the parts of request heads, over a session: the patterns per part, and
    granted files by their pieces, counted across every head the session sent (`seen`
    persists between requests)."""

    def __init__(
        self, granted: GrantedContent | None, seen: dict[str, set[int]] | None = None
    ) -> None:
        self.granted = granted
        self._seen = seen if seen is not None else {}  # file label -> piece hashes seen
        self.findings: list[Finding] = []
        self._kinds: set[str] = set()
        self._files: set[int] = set()  # granted files found in this head already

    def parts(self, parts: list[tuple[str, bytes]]) -> list[Finding]:
        """Inspect a request head's parts. Most heads carry nothing: all the parts are read
        at once first, and looked at one by one only if that finds a marker (or there is
        granted content to look for)."""
        granted = self.granted is not None and bool(self.granted.pieces or self.granted.digests)
        if not granted:
            joined = b"\x00".join(
                view for _, view in decoded_views(b"\x00".join(data for _, data in parts))
            )
            if not _MARKER.search(joined):
                return []
        new: list[Finding] = []
        for where, data in parts:
            new += self.part(where, data)
        return new

    def part(
        self, where: str, data: bytes, offset: int = 0, *, name: bool = False
    ) -> list[Finding]:
        """Inspect one part (`where`: "the query", "header x-token", …) in every reading;
        `name`: a host name's labels, which may also be base32."""
        new: list[Finding] = []
        granted = self.granted is not None and bool(self.granted.pieces or self.granted.digests)
        views = decoded_views(data, base32=name, every=granted)
        joined = b"\x00".join(view for _, view in views)
        marked = {_MARKED[m] for m in _MARKER.findall(joined)}
        if b"sk-ant-" in joined:
            marked.add("anthropic-key")  # its marker overlaps openai's, which findall took
        patterns = [
            (kind, pattern)
            for kind, pattern in SECRET_PATTERNS
            if kind in marked and kind not in self._kinds
        ]
        if not (patterns or granted):
            return new
        for how, view in views:
            said = f"{where} ({how})" if how else where
            for kind, pattern in patterns:
                if kind in self._kinds:
                    continue
                match = pattern.search(view)
                if match:
                    self._kinds.add(kind)
                    new.append(Finding(kind, f"{kind} in {said}", offset))
            if granted:
                new += self._granted_in(view, said, offset)
        self.findings += new
        return new

    def _granted_in(self, view: bytes, said: str, offset: int) -> list[Finding]:
        assert self.granted is not None
        index = self.granted
        found: list[Finding] = []
        touched: set[int] = set()
        number = index.digests.get(hashlib.sha256(view).hexdigest()) if view else None
        if number is not None:
            touched.add(number)
            self._seen.setdefault(index.files[number], set()).add(-1)
        if index.pieces:
            for piece in _pieces(_unescape(view.replace(b"\\n", b"\n"))):
                value = hash(piece)
                for file in index.pieces.get(value, ()):
                    touched.add(file)
                    self._seen.setdefault(index.files[file], set()).add(value)
        for file in sorted(touched - self._files):
            label = index.files[file]
            seen = self._seen[label]
            if -1 in seen or len(seen) >= min(MATCHES_TO_FIND, index.piece_counts[file]):
                self._files.add(file)
                found.append(Finding("granted-file", f"{label} in {said}", offset))
        return found
