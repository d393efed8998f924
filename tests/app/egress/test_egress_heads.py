"""No free channel to an allowed host: what a request's head carries (path, query, header
values, cookies, a host name under a wildcard) is inspected like a body and counted toward the
upload threshold. Adversarial, at a real loopback server: every held request is checked at
the server — refused on timeout (it saw nothing), delivered once when approved."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from app.consent import Answer, ConsentRequest, Verdict, denied
from app.egress.inspect import GrantedContent
from app.egress.policy import IPAddress
from app.profiles import Profile, parse_profile
from tests.app.egress.test_egress_proxy import harness, profile, raw
from tests.netsupport import FixedGranted, RecordingServer, ScriptedFrontEnd

NOTES = (
    "\n".join(
        f"line {i}: the quarterly numbers nobody outside may read, row {i * 7}" for i in range(8)
    )
    + "\n"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n"
    "-----END RSA PRIVATE KEY-----"
)
CLOUD = "AKIA" + "IOSFODNN7EXAMPL3"  # the shape of an AWS access key id
PAYLOADS = {"granted-file": NOTES, "private-key": PEM, "aws-access-key": CLOUD}


def encoded(data: str, how: str, *, urlsafe: bool = False) -> str:
    if how == "plain":
        return data
    if how == "url":
        return quote(data, safe="")
    b64 = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data.encode())
    return b64.decode().rstrip("=")


def request(port: int, case: int, place: str, value: str) -> bytes:
    """A GET to files.test carrying `value` in `place`, its path starting `/cCASE/`."""
    path, extra = f"/c{case}/plain", ""
    if place == "query":
        path = f"/c{case}/search?q={value}&page=2"
    elif place == "path":
        path = f"/c{case}/files/{value}/index.html"
    elif place == "header":
        extra = f"X-Trace-Context: {value}\r\n"
    elif place == "cookie":
        extra = f"Cookie: theme=dark; session={value}\r\n"
    return (
        f"GET http://files.test:{port}{path} HTTP/1.1\r\nHost: files.test:{port}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode()


CASES = [
    (kind, place, how)
    for kind in PAYLOADS
    for place in ("query", "path", "header", "cookie")
    for how in ("plain", "url", "base64")
    # A key and a file have spaces and newlines: they travel encoded, or not at all.
    if how != "plain" or kind == "aws-access-key"
]


def granted(tmp_path: Path) -> FixedGranted:
    (tmp_path / "notes.md").write_text(NOTES)
    return FixedGranted(GrantedContent.build([("/home/u/notes.md", tmp_path / "notes.md")]))


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("verdict", ["timeout", "approved"])
def test_secrets_and_granted_content_in_a_head_are_held(tmp_path: Path, verdict: str) -> None:
    with RecordingServer() as upstream:
        front = (
            ScriptedFrontEnd(delay=None)
            if verdict == "timeout"
            else ScriptedFrontEnd(Verdict.ALLOW)
        )
        prof = profile(upstream.port, timeout="2s")
        with harness(tmp_path, prof, front_end=front, granted=granted(tmp_path)) as proxy:
            sent = [
                request(
                    upstream.port, i, place, encoded(PAYLOADS[kind], how, urlsafe=place == "path")
                )
                for i, (kind, place, how) in enumerate(CASES)
            ]
            # At once: the timeouts run side by side.
            with ThreadPoolExecutor(len(sent)) as pool:
                responses = list(pool.map(lambda data: raw(proxy.port, data), sent))
    assert len(front.asked) == len(CASES)
    for i, ((kind, place, how), response) in enumerate(zip(CASES, responses, strict=True)):
        case = f"{kind} in the {place}, {how}"
        question = next(q for q in front.asked if q.details["head"].startswith(f"GET /c{i}/"))
        assert question.kind == "network.upload", case
        assert kind in {f["kind"] for f in question.details["findings"]}, case
        if verdict == "timeout":
            assert status(response) == 403 and b"not approved (timeout)" in response, case
        else:
            assert status(response) == 200, case
    delivered = sorted(int(r["path"].split("/")[1][1:]) for r in upstream.seen.requests)
    if verdict == "timeout":
        assert delivered == []  # nothing of a held request reached the server
    else:
        assert delivered == list(range(len(CASES)))  # each exactly once
        for r in upstream.seen.requests:  # as the agent sent it
            i = int(r["path"].split("/")[1][1:])
            assert r["path"].encode() in sent[i]
            for name in ("x-trace-context", "cookie"):
                if name in r["headers"]:
                    assert r["headers"][name].encode() in sent[i]


class Scripted:
    """A front end answering from a script: True allows, False denies, None times out."""

    def __init__(self, script: list[bool | None]) -> None:
        self.script = script
        self.asked: list[ConsentRequest] = []

    async def answer(self, request: ConsentRequest) -> Answer:
        self.asked.append(request)
        step = self.script.pop(0) if self.script else False
        if step is None:
            await asyncio.Event().wait()
        return Answer(Verdict.ALLOW, by="test") if step else denied("test")


def drip(port: int, count: int, proxy_port: int) -> list[int]:
    codes = []
    for _ in range(count):
        value = secrets.token_hex(30)  # 60 bytes; random, so no finding
        codes.append(
            status(
                raw(
                    proxy_port,
                    (
                        f"GET http://files.test:{port}/d?v={value} HTTP/1.1\r\n"
                        f"Host: files.test:{port}\r\nConnection: close\r\n\r\n"
                    ).encode(),
                )
            )
        )
    return codes


def test_a_drip_of_small_gets_adds_up_to_the_threshold(tmp_path: Path) -> None:
    """Each GET carries 65 bytes of data (its path and query): under a 1 KiB threshold
    the 16th passes it. Held, it is refused on timeout and nothing of it arrives; the next
    one is held again (refused bytes never left, the count stays), and once approved the
    count starts again."""
    with RecordingServer() as upstream:
        front = Scripted([None, True])
        prof = profile(upstream.port, threshold="1k", timeout="1s")
        with harness(tmp_path, prof, front_end=front) as proxy:
            codes = drip(upstream.port, 17, proxy.port)
            codes += drip(upstream.port, 16, proxy.port)
    assert codes[:15] == [200] * 15
    assert codes[15:17] == [403, 200]  # timed out; then approved
    assert codes[17:32] == [200] * 15 and codes[32] == 403  # counted anew, then denied
    assert len(upstream.seen.requests) == 31
    question = front.asked[0]
    assert question.details["earlier"] == 15 * 65 and question.details["head_size"] == 65
    assert question.details["findings"] == [] and question.details["threshold"] == 1024


def test_a_header_value_repeated_is_counted_once(tmp_path: Path) -> None:
    """A constant cookie says nothing new on the next request: 50 GETs with the same
    600-byte cookie stay under a 1 KiB threshold; a changing one does not."""
    cookie = "prefs=" + "a" * 594
    with RecordingServer() as upstream:
        front = Scripted([])
        with harness(tmp_path, profile(upstream.port, threshold="1k"), front_end=front) as proxy:
            codes = [
                status(
                    raw(
                        proxy.port,
                        (
                            f"GET http://files.test:{upstream.port}/ HTTP/1.1\r\n"
                            f"Host: files.test:{upstream.port}\r\nCookie: {cookie}\r\n"
                            "Connection: close\r\n\r\n"
                        ).encode(),
                    )
                )
                for _ in range(50)
            ]
            changed = status(
                raw(
                    proxy.port,
                    (
                        f"GET http://files.test:{upstream.port}/ HTTP/1.1\r\n"
                        f"Host: files.test:{upstream.port}\r\nCookie: {cookie[:-1]}b\r\n"
                        "Connection: close\r\n\r\n"
                    ).encode(),
                )
            )
    assert codes == [200] * 50 and changed == 403


class WildResolver:
    """Resolves every name under wild.test to loopback, and keeps the names it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if not host.endswith(".wild.test"):
            raise OSError(f"unknown name {host}")
        return [ipaddress.ip_address("127.0.0.1")]


def wild_profile(port: int, threshold: str = "64k") -> Profile:
    return parse_profile(
        'name = "t"\nimage = "i"\n[network]\n'
        f'allow = ["files.test:{port}", "*.wild.test:{port}"]\nallow_private = true\n'
        f'[approval]\nuploads = "ask"\nupload_threshold = "{threshold}"\ntimeout = "1s"\n',
        "t.toml",
    )


@pytest.mark.parametrize("how", ["hex", "base32"])
def test_a_secret_in_a_host_name_under_a_wildcard_is_held_before_it_is_resolved(
    tmp_path: Path, how: str
) -> None:
    label = (
        CLOUD.encode().hex()
        if how == "hex"
        else base64.b32encode(CLOUD.encode()).decode().rstrip("=").lower()
    )
    host = f"{label}.wild.test"
    with RecordingServer() as upstream:
        for verdict in (None, True):
            resolver = WildResolver()
            front = Scripted([verdict])
            with harness(
                tmp_path,
                wild_profile(upstream.port),
                front_end=front,
                resolver=resolver,
                session=f"w-{verdict}",
            ) as proxy:
                plain = raw(
                    proxy.port,
                    (
                        f"GET http://{host}:{upstream.port}/ HTTP/1.1\r\n"
                        f"Host: {host}:{upstream.port}\r\nConnection: close\r\n\r\n"
                    ).encode(),
                )
                tunnel = (
                    raw(
                        proxy.port,
                        (
                            f"CONNECT {host}:{upstream.port} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                        ).encode(),
                        read=True,
                    )
                    if verdict is None
                    else b""
                )
            if verdict is None:
                assert status(plain) == 403 and status(tunnel) == 403
                assert resolver.asked == []  # no lookup carried the label out
                question = front.asked[0]
                assert question.details["hostname"] is True
                assert question.details["findings"][0]["kind"] == "aws-access-key"
                proxy.wait_events(2)
                assert label not in repr([e.to_json() for e in proxy.events])  # log: "…"
            else:
                assert status(plain) == 200 and resolver.asked == [host]
    assert [r["headers"]["host"] for r in upstream.seen.requests] == [f"{host}:{upstream.port}"]


def test_new_names_under_a_wildcard_add_up_to_the_threshold(tmp_path: Path) -> None:
    """Every new name under `*.wild.test` is data (its 40 bytes of labels), held before it is
    resolved once the count passes 1 KiB; a name used before counts no more."""
    with RecordingServer() as upstream:
        resolver = WildResolver()
        front = Scripted([False])
        with harness(
            tmp_path,
            wild_profile(upstream.port, threshold="1k"),
            front_end=front,
            resolver=resolver,
        ) as proxy:
            names = [f"{secrets.token_hex(20)}.wild.test" for _ in range(30)]
            codes = []
            for name in [names[0]] * 3 + names:
                codes.append(
                    status(
                        raw(
                            proxy.port,
                            (
                                f"GET http://{name}:{upstream.port}/ HTTP/1.1\r\n"
                                f"Host: {name}:{upstream.port}\r\nConnection: close\r\n\r\n"
                            ).encode(),
                        )
                    )
                )
    held = codes.index(403)
    assert codes[:held] == [200] * held and held > 20
    distinct = held - 3  # names[0] went three times and once more: counted once
    question = front.asked[0]
    assert question.details["hostname"] is True
    # Each passed request added its labels (if new) and its path, "/".
    assert question.details["earlier"] == 40 * distinct + held
    assert question.details["earlier"] + 40 > 1024 >= question.details["earlier"]
    assert names[held - 3] not in resolver.asked


@pytest.mark.parametrize("where", ["header name", "method", "path"])
def test_a_secret_where_no_value_is_expected_is_held_and_kept_out_of_the_log(
    tmp_path: Path, where: str
) -> None:
    """A header's name and the method are the agent's choice too; and the log, which keeps
    paths and the findings' labels, does not get the secret from a held request."""
    with RecordingServer() as upstream:
        front = Scripted([False])
        with harness(tmp_path, profile(upstream.port), front_end=front) as proxy:
            method, path, extra = "GET", "/p", ""
            if where == "header name":
                extra = f"X-{CLOUD.encode().hex()}: 1\r\n"  # h11 lowers names: hex
            elif where == "method":
                method = CLOUD
            else:
                path = f"/files/{base64.urlsafe_b64encode(CLOUD.encode()).decode()}/x"
            response = raw(
                proxy.port,
                (
                    f"{method} http://files.test:{upstream.port}{path} HTTP/1.1\r\n"
                    f"Host: files.test:{upstream.port}\r\n{extra}Connection: close\r\n\r\n"
                ).encode(),
            )
            events = proxy.wait_events(1)
    assert status(response) == 403 and upstream.seen.requests == []
    assert [f["kind"] for f in front.asked[0].details["findings"]] == ["aws-access-key"]
    logged = repr([e.to_json() for e in events])
    for encoded in (CLOUD, base64.urlsafe_b64encode(CLOUD.encode()).decode(), CLOUD.encode().hex()):
        assert encoded not in logged
