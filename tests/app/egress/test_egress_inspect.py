"""The upload inspector, by table: secret patterns, granted content in raw and JSON bodies,
chunk boundaries, bounded previews."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from app.egress.inspect import (
    GrantedContent,
    HeadScan,
    UploadInspector,
    mask_secrets,
    preview,
)

PEM = (
    b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    b"-----END OPENSSH PRIVATE KEY-----\n"
)
NOTES = "\n".join(
    f"Line {i}: the quarterly figures for region {i} are confidential" for i in range(20)
).encode()


def inspect(body: bytes, granted: GrantedContent | None = None, chunk: int = 7) -> list[str]:
    inspector = UploadInspector(granted)
    for start in range(0, len(body), chunk):
        inspector.feed(body[start : start + chunk])
    inspector.finish()
    return sorted(f"{f.kind}:{f.label}" for f in inspector.findings)


@pytest.fixture
def granted(tmp_path: Path) -> GrantedContent:
    (tmp_path / "notes.md").write_bytes(NOTES)
    (tmp_path / "tiny.txt").write_bytes(b"short file, one line only ok\n")
    return GrantedContent.build(
        [("/home/u/notes.md", tmp_path / "notes.md"), ("/home/u/tiny.txt", tmp_path / "tiny.txt")]
    )


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b"hello world", []),
        (PEM, ["private-key:private-key"]),
        (b"-----BEGIN RSA PRIVATE KEY-----\n", ["private-key:private-key"]),
        (b"-----BEGIN PUBLIC KEY-----\n", []),
        (b'{"k": "AKIAIOSFODNN7EXAMPLE"}', ["aws-access-key:aws-access-key"]),
        (b"token=ghp_" + b"a" * 36, ["github-token:github-token"]),
        (b"sk-ant-api03-" + b"x" * 30, ["anthropic-key:anthropic-key"]),
        (b"Bearer sk-proj-" + b"A" * 40, ["openai-key:openai-key"]),
        (b"xoxb-1234567890-abcdef", ["slack-token:slack-token"]),
        (b"AIza" + b"B" * 35, ["google-api-key:google-api-key"]),
        (b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU", ["jwt:jwt"]),
    ],
)
def test_secret_patterns_across_chunk_boundaries(body: bytes, found: list[str]) -> None:
    assert inspect(b"x" * 5000 + b" " + body + b" " + b"y" * 10) == found


def test_granted_file_found_raw_in_json_and_as_the_whole_body(granted: GrantedContent) -> None:
    assert inspect(NOTES, granted) == ["granted-file:/home/u/notes.md"]
    in_json = json.dumps({"messages": [{"content": NOTES.decode()}]}).encode()
    assert inspect(in_json, granted, chunk=1000) == ["granted-file:/home/u/notes.md"]
    three_lines = b"\n".join(NOTES.split(b"\n")[5:8])
    assert inspect(b"prefix\n" + three_lines + b"\nsuffix", granted) == [
        "granted-file:/home/u/notes.md"
    ]
    assert inspect(NOTES.split(b"\n")[3], granted) == []  # one line is not the file
    assert inspect(b"short file, one line only ok", granted) == ["granted-file:/home/u/tiny.txt"]
    assert inspect(b"unrelated text of some length here\n" * 10, granted) == []


def test_sha256_size_and_head() -> None:
    inspector = UploadInspector()
    inspector.feed(b"a" * 300)
    inspector.feed(b"b")
    assert inspector.size == 301 and len(inspector.head) == 256
    assert inspector.sha256 == __import__("hashlib").sha256(b"a" * 300 + b"b").hexdigest()


def test_preview_and_masking_are_safe() -> None:
    assert preview(b"ok\n\x1b[31mred\\\xff") == "ok\\n\\x1b[31mred\\x5c\\xff"
    assert mask_secrets("/bot?t=ghp_" + "a" * 36) == "/bot?t=<github-token>"


def test_the_index_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_bytes(NOTES)
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    content = GrantedContent.of_tree(tmp_path, Path("/"))
    assert content.files == (f"/{'real.txt'}",) or content.files == ("/real.txt",)


# request heads: every reading of a part, and granted pieces over a session

AWS = b"AKIA" + b"IOSFODNN7EXAMPL3"


@pytest.mark.parametrize(
    ("data", "how"),
    [
        (AWS, ""),
        (b"q=" + AWS.replace(b"A", b"%41"), "url"),
        (b"v=" + base64.b64encode(AWS).rstrip(b"="), "base64"),
        (b"x" + base64.urlsafe_b64encode(b"\xff" + AWS), "base64"),  # another alignment
        (b"".join(b"%%%02X" % c for c in base64.b64encode(AWS)), "url+base64"),
        (b"t=" + AWS.hex().encode(), "hex"),
        (b"t=" + b"0" + AWS.hex().encode(), "hex"),  # odd start
    ],
)
def test_a_token_is_found_in_every_reading_of_a_head_part(data: bytes, how: str) -> None:
    scan = HeadScan(None)
    found = scan.part("the query", data)
    assert [f.kind for f in found] == ["aws-access-key"]
    assert found[0].label == ("aws-access-key in the query" + (f" ({how})" if how else ""))


def test_a_host_label_is_also_read_as_base32() -> None:
    label = base64.b32encode(AWS).decode().rstrip("=").lower().encode()
    assert HeadScan(None).part("the host name", label) == []
    assert [f.kind for f in HeadScan(None).part("the host name", label, name=True)] == [
        "aws-access-key"
    ]


def test_a_granted_file_sent_a_line_a_request_is_found_by_the_third(tmp_path: Path) -> None:
    lines = [f"line {i} of a file that is granted and must not leave".encode() for i in range(6)]
    (tmp_path / "f").write_bytes(b"\n".join(lines))
    index = GrantedContent.build([("/f", tmp_path / "f")])
    seen: dict[str, set[int]] = {}
    found = [
        HeadScan(index, seen).part("the query", quote_from_bytes(line).encode())
        for line in lines[:3]
    ]
    assert found[:2] == [[], []]
    assert [f.label for f in found[2]] == ["/f in the query (url)"]


def test_padding_a_head_with_harmless_runs_hides_nothing() -> None:
    padding = b"&".join(
        b"p%d=" % i + base64.b64encode(b"harmless value %03d" % i) for i in range(300)
    )
    hidden = padding + b"&k=" + base64.b64encode(AWS)
    assert [f.kind for f in HeadScan(None).parts([("the query", hidden)])] == ["aws-access-key"]
