"""The proxy's core without sockets: playbooks of "this comes in, that goes out". Each test
drives `ClientConnection.run()` by hand, answering its commands as the driver would."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Generator
from typing import Any

import pytest

from app.consent import Answer, RequestKind, Verdict
from app.egress.exchange import ClientConnection
from app.egress.steps import (
    Ask,
    CloseTunnel,
    Command,
    Connect,
    Connected,
    DropUpstream,
    Log,
    OpenTunnel,
    ProxySettings,
    ReadClient,
    ReadCredential,
    ReadGranted,
    ReadUpstream,
    RefuseClient,
    RelayTunnel,
    RelayWebSocket,
    Resolve,
    SendClient,
    SendUpstream,
)
from app.events import EventKind
from app.profiles import Profile, parse_profile

LOOPBACK = [ipaddress.ip_address("127.0.0.1")]
KEY = "sk-proj-" + "Ab3" * 52  # 164 characters, the shape of an OpenAI project key


def profile(*, uploads: str = "ask", threshold: str = "1k", extra: str = "") -> Profile:
    return parse_profile(
        'name = "t"\nimage = "i"\n[network]\nallow = ["files.test:80"]\nallow_private = true\n'
        f'{extra}\n[approval]\nuploads = "{uploads}"\nupload_threshold = "{threshold}"\n',
        "t.toml",
    )


ROUTE = '[[network.routes]]\nname = "llm"\nupstream = "http://127.0.0.1:9"\nsecret = "llm-key"\n'


class Playbook:
    """The driver's side of a playbook: `command` is what the core asks for now; `give`
    sends it the result and moves on to the next command (None once the core is done)."""

    def __init__(self, core: ClientConnection) -> None:
        self._steps: Generator[Command, Any, Any] = core.run()
        self.command: Command | None = next(self._steps)

    def give(self, result: Any = None) -> Command | None:
        try:
            self.command = self._steps.send(result)
        except StopIteration:
            self.command = None
        return self.command

    def fail(self, error: BaseException) -> Command | None:
        try:
            self.command = self._steps.throw(error)
        except StopIteration:
            self.command = None
        return self.command

    def expect(self, kind: type[Any]) -> Any:
        assert isinstance(self.command, kind), f"expected {kind.__name__}, got {self.command}"
        return self.command

    def sent_to_client(self) -> bytes:
        """Answers every SendClient in a row with None, returning what they wrote."""
        out = b""
        while isinstance(self.command, SendClient):
            out += b"".join(bytes(d) for d in self.command.data)
            self.give()
        return out


def connection(prof: Profile, **settings: Any) -> ClientConnection:
    return ClientConnection("s1", prof, ProxySettings(splice=False, **settings))


def test_a_plain_request_resolves_once_connects_relays_and_logs_one_event() -> None:
    book = Playbook(connection(profile()))
    assert book.expect(ReadClient).timeout == 120.0
    book.give(b"GET http://files.test/a HTTP/1.1\r\nHost: files.test\r\n\r\n")
    assert book.expect(Resolve) == Resolve("files.test", 80, 10.0)
    book.give(LOOPBACK)
    book.give(None)  # ReadGranted: none
    assert book.expect(Connect) == Connect(LOOPBACK, 80, None)
    book.give(Connected("127.0.0.1", spliceable=False))
    sent = b"".join(book.expect(SendUpstream).data)
    assert sent.startswith(b"GET /a HTTP/1.1\r\n") and b"host: files.test\r\n" in sent
    book.give()
    book.expect(ReadUpstream)
    book.give(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    out = book.sent_to_client()
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\nok")
    log = book.expect(Log)
    assert log.kind is EventKind.NET_REQUEST and log.record.details()["status"] == 200
    assert log.record.details()["address"] == "127.0.0.1"
    book.give()
    book.expect(ReadClient)  # kept alive: the next request may come
    assert book.give(b"") is None


def test_a_host_not_listed_is_refused_with_its_reason_and_never_resolved() -> None:
    book = Playbook(connection(profile()))
    book.give(b"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    log = book.expect(Log)
    assert log.kind is EventKind.NET_REFUSED and log.record.rule == "not-listed"
    response = book.give()
    assert isinstance(response, RefuseClient) and response.response.startswith(b"HTTP/1.1 403")
    assert b"not-listed" in response.response or b"not in" in response.response
    assert book.give() is None


def test_an_idle_kept_alive_connection_just_closes_and_a_slow_head_gets_408() -> None:
    book = Playbook(connection(profile()))
    assert book.fail(TimeoutError()) is None
    book = Playbook(connection(profile()))
    book.give(b"GET http://files.test/ HTTP/1.1\r\n")
    assert book.expect(ReadClient).timeout <= 10.0  # the head's own deadline
    book.fail(TimeoutError())
    assert book.expect(Log).record.status == 408


# The path ("/u", 2 bytes) is data too: with it, 1022 body bytes reach the threshold.
@pytest.mark.parametrize(("size", "asked"), [(1022, False), (1023, True)])
def test_a_body_past_the_upload_threshold_is_held_before_anything_is_sent(
    size: int, asked: bool
) -> None:
    book = Playbook(connection(profile(threshold="1k")))
    book.give(
        f"POST http://files.test/u HTTP/1.1\r\nHost: files.test\r\n"
        f"Content-Length: {size}\r\n\r\n".encode()
        + b"x" * size
    )
    book.expect(Resolve)
    book.give(LOOPBACK)
    book.expect(ReadGranted)
    book.give(None)
    if asked:
        ask = book.expect(Ask)
        assert ask.kind is RequestKind.UPLOAD and ask.details["size"] == size
        book.give(Answer(Verdict.DENY, by="test"))
        log = book.expect(Log)
        assert log.record.rule == "upload-refused" and log.record.held
        assert book.give().response.startswith(b"HTTP/1.1 403")  # type: ignore[union-attr]
    else:
        book.expect(Connect)


@pytest.mark.parametrize(("uploads", "asked"), [("always", True), ("never", False), ("ask", False)])
def test_uploads_always_asks_on_a_tunnel_too(uploads: str, asked: bool) -> None:
    book = Playbook(connection(profile(uploads=uploads)))
    book.give(b"CONNECT files.test:80 HTTP/1.1\r\nHost: files.test:80\r\n\r\nhello")
    book.expect(Resolve)
    book.give(LOOPBACK)
    assert book.expect(OpenTunnel).port == 80
    book.give("127.0.0.1")
    assert book.sent_to_client().startswith(b"HTTP/1.1 200 ")
    relay = book.expect(RelayTunnel)
    assert relay.first == b"hello"
    question = relay.uploads.question(5)
    assert (question is not None) is asked
    if question is not None:
        assert question.details["tunnel"] is True and question.details["size"] == 5


@pytest.mark.parametrize(("size", "asked"), [(1024, False), (1025, True)])
def test_a_tunnel_pauses_past_the_threshold_once(size: int, asked: bool) -> None:
    book = Playbook(connection(profile(threshold="1k")))
    book.give(b"CONNECT files.test:80 HTTP/1.1\r\nHost: files.test:80\r\n\r\n")
    book.give(LOOPBACK)
    book.give("127.0.0.1")
    book.sent_to_client()
    uploads = book.expect(RelayTunnel).uploads
    assert uploads.question(size - 1) is None
    uploads.sent(size - 1)
    question = uploads.question(1)
    assert (question is not None) is asked
    if question is not None:
        uploads.answered(Answer(Verdict.ALLOW, by="test"), 1)
        uploads.sent(1)
        assert uploads.question(10**9) is None  # approved: the tunnel goes on unasked
    book.give()
    book.expect(CloseTunnel)
    assert book.give().kind is EventKind.NET_TUNNEL  # type: ignore[union-attr]


def test_a_chunked_upload_that_passes_the_threshold_after_inspection_is_asked_about() -> None:
    book = Playbook(connection(profile(threshold="2k"), inspect_limit=1024))
    book.give(
        b"POST http://files.test/u HTTP/1.1\r\nHost: files.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"a" * 1024 + b"\r\n"
    )
    book.give(LOOPBACK)
    book.expect(ReadGranted)
    book.give(None)
    book.expect(Connect)  # 1 KiB and more to come: under the threshold so far
    book.give(Connected("127.0.0.1", spliceable=False))
    book.expect(SendUpstream)
    book.give()  # the head
    book.give()  # the inspected kilobyte
    book.expect(ReadClient)
    book.give(b"800\r\n" + b"b" * 2048 + b"\r\n")
    ask = book.expect(Ask)
    assert ask.details["size"] == 3072 and ask.details["complete"] is False
    book.give(Answer(Verdict.DENY, by="test"))
    assert book.expect(Log).record.rule == "upload-refused"


def test_a_route_adds_the_credential_and_masks_it_when_echoed_split_across_reads() -> None:
    book = Playbook(connection(profile(extra=ROUTE)))
    book.give(b"GET /routes/llm/v1/models HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n")
    assert book.expect(ReadCredential).name == "llm-key"
    book.give(KEY)
    book.expect(Connect)
    book.give(Connected("127.0.0.1", spliceable=True))
    sent = b"".join(book.expect(SendUpstream).data)
    assert f"Authorization: Bearer {KEY}\r\n".encode() in sent
    book.give()
    body = b"you sent " + KEY.encode() + b" back"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    book.expect(ReadUpstream)
    book.give(head + body[:80])  # the key split across two reads of the upstream
    out = book.sent_to_client()
    book.expect(ReadUpstream)
    book.give(body[80:])
    out += book.sent_to_client()
    assert KEY.encode() not in out and KEY.encode()[:60] not in out
    assert out.endswith(b"you sent " + b"*" * len(KEY) + b" back")
    assert book.expect(Log).record.route == "llm"


def test_a_route_answer_is_forwarded_at_once_when_it_cannot_start_the_key() -> None:
    book = Playbook(connection(profile(extra=ROUTE)))
    book.give(b"GET /routes/llm/v1/stream HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n")
    book.give(KEY)
    book.give(Connected("127.0.0.1", spliceable=False))
    book.give()
    book.give(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    )
    book.sent_to_client()
    book.expect(ReadUpstream)
    event = b'data: {"delta": "hi"}\n\n'
    book.give(b"%x\r\n%s\r\n" % (len(event), event))
    assert event in book.sent_to_client()  # not held back for the next event
    # A tail that could be the key's start waits for the next read to tell.
    book.give(b"%x\r\n%s\r\n" % (len(b"data: sk-"), b"data: sk-"))
    out = book.sent_to_client()
    assert b"data: " in out and b"sk-" not in out
    book.expect(ReadUpstream)
    book.give(b"3\r\nxyz\r\n0\r\n\r\n")
    assert b"sk-xyz" in book.sent_to_client()


def test_an_upstream_silent_past_the_timeout_gets_504() -> None:
    book = Playbook(connection(profile(), body_timeout=3.0))
    book.give(b"GET http://files.test/slow HTTP/1.1\r\nHost: files.test\r\n\r\n")
    book.give(LOOPBACK)
    book.give(None)  # ReadGranted: none
    book.give(Connected("127.0.0.1", spliceable=False))
    book.give()
    assert book.expect(ReadUpstream).timeout == 3.0
    book.fail(TimeoutError())
    log = book.expect(Log)
    assert log.record.status == 504 and log.record.rule == "upstream"


def test_a_closed_kept_upstream_is_dropped_and_a_new_one_opened() -> None:
    book = Playbook(connection(profile()))
    request = b"GET http://files.test/a HTTP/1.1\r\nHost: files.test\r\n\r\n"
    book.give(request)
    book.give(LOOPBACK)
    book.give(None)  # ReadGranted: none
    book.give(Connected("127.0.0.1", spliceable=False))
    book.give()
    book.give(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    book.sent_to_client()
    book.give()  # the log
    book.give(request)
    book.give(LOOPBACK)
    book.give(None)  # ReadGranted: none
    book.give(False)  # UpstreamAlive: the upstream hung up meanwhile
    book.expect(DropUpstream)
    book.give()
    book.expect(Connect)


@pytest.mark.parametrize(("route", "silence"), [("", 600.0), ('idle_timeout = "90s"\n', 90.0)])
def test_a_route_waits_for_its_upstream_as_long_as_its_idle_timeout(
    route: str, silence: float
) -> None:
    book = Playbook(connection(profile(extra=ROUTE + route), body_timeout=3.0))
    book.give(
        b"POST /routes/llm/v1/responses HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    book.give(KEY)
    book.expect(Connect)
    book.give(Connected("127.0.0.1", spliceable=False))
    while isinstance(book.command, SendUpstream):
        book.give()
    assert book.expect(ReadUpstream).timeout == silence
    book.fail(TimeoutError())
    log = book.expect(Log)
    assert log.record.status == 504
    assert log.record.reason == f"the upstream was silent for {silence:g} s"


WEBSOCKET = (
    b"GET /routes/llm/v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
)


def websocket_handshake(book: Playbook) -> bytes:
    book.give(WEBSOCKET)
    book.give(KEY)
    book.expect(Connect)
    book.give(Connected("127.0.0.1", spliceable=False))
    sent = b""
    while isinstance(book.command, SendUpstream):
        sent += b"".join(book.command.data)
        book.give()
    return sent


def test_a_websocket_on_a_route_switches_with_the_credential_and_no_extension() -> None:
    book = Playbook(connection(profile(extra=ROUTE)))
    sent = websocket_handshake(book)
    assert f"Authorization: Bearer {KEY}\r\n".encode() in sent
    assert b"upgrade: websocket" in sent and b"permessage-deflate" not in sent
    book.expect(ReadUpstream)
    book.give(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n\x81\x02hi"
    )
    answer = book.sent_to_client()
    assert answer.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-accept: x" in answer
    relay = book.expect(RelayWebSocket)
    assert relay.first_down == b"\x81\x02hi"
    assert relay.relay.uploads.question(10**9) is None  # a route's own service
    # A frame that ends in what could begin the key goes on whole: a key split across two
    # frames has a frame header in its middle, which no scrubber of the stream could see.
    whole = b"\x81\x07yes" + KEY.encode()[:4]
    assert relay.relay.down(whole) == whole
    # Within a frame it waits for the frame's next bytes to tell.
    assert relay.relay.down(b"\x81\x05" + KEY.encode()[:2]) == b"\x81\x05"
    assert relay.relay.down(KEY.encode()[2:5]) == KEY.encode()[:5]
    book.give()
    book.expect(DropUpstream)
    log = book.give()
    assert isinstance(log, Log) and log.record.status == 101
    assert log.record.details()["websocket"] == {"frames_up": 0, "frames_down": 2}


def test_a_route_upstream_that_picks_a_websocket_extension_is_refused() -> None:
    book = Playbook(connection(profile(extra=ROUTE)))
    websocket_handshake(book)
    book.give(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    log = book.expect(Log)
    assert log.record.status == 502 and "extension" in log.record.reason
    book.give()
    # The handshake carried the key: its use is an event of its own.
    assert book.expect(Log).kind is EventKind.NET_CREDENTIAL
    assert isinstance(book.give(), RefuseClient)


def test_a_get_with_a_token_in_its_query_is_held_before_anything_is_sent() -> None:
    book = Playbook(connection(profile()))
    token = base64.b64encode(b"AKIA" + b"IOSFODNN7EXAMPL3").decode()
    book.give(
        f"GET http://files.test/q?t={token} HTTP/1.1\r\nHost: files.test\r\n"
        "X-Note: plain\r\n\r\n".encode()
    )
    book.give(LOOPBACK)
    book.expect(ReadGranted)
    ask = book.give(None)
    assert isinstance(ask, Ask) and ask.kind is RequestKind.UPLOAD
    assert ask.details["findings"][0]["label"] == "aws-access-key in the query (base64)"
    assert ask.details["preview"] == f"GET /q?t={token}\\nx-note: plain"
    assert ask.details["path"] == "/q?t=…"  # the question shows the query in the preview only
    book.give(Answer(Verdict.DENY, by="test"))
    log = book.expect(Log)
    assert log.record.rule == "upload-refused" and "aws-access-key" in log.record.reason
    assert isinstance(book.give(), RefuseClient)


def test_a_new_name_under_a_wildcard_is_inspected_before_it_is_resolved() -> None:
    prof = profile(extra="").model_copy(
        update={
            "network": parse_profile(
                'name = "t"\nimage = "i"\n[network]\nallow = ["*.wild.test:443"]\n', "t.toml"
            ).network
        }
    )
    label = (b"AKIA" + b"IOSFODNN7EXAMPL3").hex()
    book = Playbook(connection(prof))
    book.give(f"CONNECT {label}.wild.test:443 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    book.expect(ReadGranted)
    ask = book.give(None)
    assert isinstance(ask, Ask) and ask.details["hostname"] is True  # no Resolve before it
    assert ask.details["findings"][0]["label"] == "aws-access-key in the host name (hex)"
    book.give(Answer(Verdict.ALLOW, by="test"))
    assert book.expect(Resolve).host == f"{label}.wild.test"


def test_a_cookie_the_host_set_goes_back_unasked_and_one_of_the_agents_does_not() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXBhcnQ"
    book = Playbook(connection(profile()))

    def request(cookie: str) -> Any:
        book.give(
            f"GET http://files.test/a HTTP/1.1\r\nHost: files.test\r\n"
            f"Cookie: {cookie}\r\n\r\n".encode()
        )
        book.give(LOOPBACK)
        return book.give(None)  # ReadGranted: none

    book.give(b"GET http://files.test/login HTTP/1.1\r\nHost: files.test\r\n\r\n")
    book.give(LOOPBACK)
    book.give(None)
    book.give(Connected("127.0.0.1", spliceable=False))
    book.give()
    book.give(
        f"HTTP/1.1 200 OK\r\nSet-Cookie: s={jwt}; Path=/; HttpOnly\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    book.sent_to_client()
    book.give()  # the log
    command = request(f"s={jwt}")
    assert not isinstance(command, Ask)  # the host's own token, sent back
    book.give(True)  # UpstreamAlive: reuse
    book.give()
    book.give(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    book.sent_to_client()
    book.give()
    command = request(f"s={jwt}; mine={'AKIA' + 'IOSFODNN7EXAMPL3'}")
    assert isinstance(command, Ask)
    assert [f["label"] for f in command.details["findings"]] == ["aws-access-key in a cookie"]
