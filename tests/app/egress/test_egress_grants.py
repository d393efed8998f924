"""Every "always" is a grant: a network answer with a lifetime is stored like a file grant,
outlives its session, is listed by `airlock grants`, and revoking it — from another process,
with the real command line — cuts the tunnel it let through and refuses what comes next."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.audit import AuditRecord, records
from app.consent import Answer, ConsentRequest, Verdict, denied
from app.egress.grants import NetworkGrants
from app.events import EventBus, EventKind
from app.grants import Access, Lifetime, network_grant_for
from app.paths import Dirs
from app.store import SessionRecord, SessionState, StateStore
from tests.app.egress.test_egress_proxy import harness, profile, raw
from tests.netsupport import RecordingServer

REPO = Path(__file__).resolve().parents[3]


class Answering:
    """Answers every question with `reply`, and keeps the questions."""

    def __init__(self, reply: Answer) -> None:
        self.reply = reply
        self.asked: list[ConsentRequest] = []

    async def answer(self, request: ConsentRequest) -> Answer:
        self.asked.append(request)
        return self.reply


def front(reply: Answer) -> Answering:
    return Answering(reply)


def cli(dirs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        XDG_STATE_HOME=str(dirs / "state"),
        XDG_CONFIG_HOME=str(dirs / "config"),
        XDG_RUNTIME_DIR=str(dirs / "run"),
    )
    return subprocess.run(
        [sys.executable, "-m", "ui.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def session(store: StateStore, name: str) -> None:
    store.add_session(SessionRecord(name, "t", "i", None, "1:1", SessionState.RUNNING, time.time()))


def get(proxy_port: int, host: str, port: int) -> int:
    response = raw(
        proxy_port,
        (
            f"GET http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}"
            "\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    return int(response.split(b" ", 2)[1])


def test_an_always_answer_outlives_its_session_is_listed_and_revoking_it_cuts_a_tunnel(
    tmp_path: Path,
) -> None:
    base = tmp_path / "xdg"
    (base / "run").mkdir(parents=True, mode=0o700)
    dirs = Dirs(
        config=base / "config" / "airlock",
        state=base / "state" / "airlock",
        runtime=base / "run" / "airlock",
    )
    store = StateStore(dirs.database)
    book = NetworkGrants(store, EventBus())
    with RecordingServer() as upstream:
        prof = profile(upstream.port)
        # Session one: the user answers "always, for this profile".
        session(store, "one")
        first = front(Answer(Verdict.ALLOW, Lifetime.ALWAYS, by="dialog"))
        with harness(tmp_path, prof, front_end=first, session="one", grants=book) as proxy:
            assert get(proxy.port, "ask.test", upstream.port) == 200
            proxy.wait_events(1)  # the allowed request
        store.end_session("one", SessionState.EXITED, 0, None)
        assert [q.subject for q in first.asked] == [f"ask.test:{upstream.port}"]
        added = [e for e in proxy.events if e.kind is EventKind.GRANT_ADDED]
        assert added and added[0].details["lifetime"] == "always"
        grant = added[0].details["grant"]

        # It is the profile's now: stored, listed by the command line.
        listed = cli(base, "grants", "--json")
        assert listed.returncode == 0, listed.stderr
        shown = {g["id"]: g for g in json.loads(listed.stdout)}
        assert shown[grant]["host"] == "ask.test" and shown[grant]["port"] == upstream.port
        assert shown[grant]["access"] == "connect" and shown[grant]["profile"] == "t"
        assert "ask.test:" in cli(base, "grants").stdout

        # Session two is not asked; a tunnel it lets through is open when the grant goes.
        session(store, "two")
        second = front(denied("dialog"))
        with harness(tmp_path, prof, front_end=second, session="two", grants=book) as proxy:
            assert get(proxy.port, "ask.test", upstream.port) == 200
            tunnel = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            tunnel.sendall(f"CONNECT ask.test:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert b" 200 " in tunnel.recv(4096)
            tunnel.sendall(b"GET /t HTTP/1.1\r\nHost: ask.test\r\n\r\n")  # kept alive
            answer = b""
            while not answer.endswith(b"}"):  # the JSON body closes the answer
                answer += tunnel.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert second.asked == []
            revoked = cli(base, "revoke", grant)  # another process, as a user would
            assert revoked.returncode == 0, revoked.stderr
            assert f"revoked {grant}" in revoked.stdout
            started = time.monotonic()
            tunnel.settimeout(5)
            assert tunnel.recv(4096) == b""  # cut
            cut_after = time.monotonic() - started
            tunnel.close()
            # The next request is decided again: asked, and (here) refused.
            assert get(proxy.port, "ask.test", upstream.port) == 403
            proxy.wait_events(3)  # the request, the tunnel cut, the refusal
        assert [q.subject for q in second.asked] == [f"ask.test:{upstream.port}"]
        assert cut_after < 2
        cut = [
            e
            for e in proxy.events
            if e.kind is EventKind.NET_REFUSED and e.details["rule"] == "grant-revoked"
        ]
        assert cut and cut[0].subject == f"ask.test:{upstream.port}"
        assert cut[0].details["grants"] == [grant]
    assert store.network_grant(grant).revoked_at is not None  # type: ignore[union-attr]
    # The command line's revocation is in the audit log.
    revocations = [
        r for r in records(dirs.audit) if isinstance(r, AuditRecord) and r.kind == "grant.revoked"
    ]
    assert [(r.subject, r.details["grant"], r.details["network"]) for r in revocations] == [
        (f"ask.test:{upstream.port}", grant, True)
    ]
    assert [r["path"] for r in upstream.seen.requests] == ["/x", "/x", "/t"]
    store.close()


def test_a_session_answer_ends_with_its_session(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    grant = network_grant_for(
        "ask.test",
        443,
        Access.CONNECT,
        allowed=True,
        lifetime=Lifetime.SESSION,
        session="s1",
        profile="t",
    )
    assert grant is not None and grant.session == "s1" and grant.profile is None
    store.add_network_grant(grant)
    assert [g.id for g in store.network_grants(time.time())] == [grant.id]
    store.end_session("s1", SessionState.EXITED, 0, None)
    assert store.network_grants(time.time()) == []
    assert (
        network_grant_for(
            "h", 1, Access.UPLOAD, allowed=True, lifetime=Lifetime.ONCE, session="s1", profile="t"
        )
        is None
    )
    store.close()


@pytest.mark.parametrize(
    ("lifetime", "asked_again"), [(Lifetime.SESSION, False), (Lifetime.ONCE, True)]
)
def test_an_upload_approved_for_the_session_is_not_asked_again(
    tmp_path: Path, lifetime: Lifetime, asked_again: bool
) -> None:
    answering = front(Answer(Verdict.ALLOW, lifetime, by="dialog"))
    with (
        RecordingServer() as upstream,
        harness(tmp_path, profile(upstream.port, threshold="1k"), front_end=answering) as proxy,
    ):
        for _ in range(2):
            response = raw(
                proxy.port,
                (
                    f"POST http://files.test:{upstream.port}/u HTTP/1.1\r\n"
                    f"Host: files.test:{upstream.port}\r\nContent-Length: 4000\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + b"z" * 4000,
            )
            assert b" 200 " in response.split(b"\r\n", 1)[0]
    assert len(answering.asked) == (2 if asked_again else 1)
    assert len(upstream.seen.requests) == 2


def test_the_grant_book_tells_its_listeners_what_was_revoked(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    book = NetworkGrants(store)
    grant = network_grant_for(
        "a.test",
        80,
        Access.CONNECT,
        allowed=True,
        lifetime=Lifetime.ALWAYS,
        session="s",
        profile="t",
    )
    assert grant is not None

    async def scenario() -> list[str]:
        gone: list[str] = []
        await book.add(grant)
        assert book.find("other", "t", "A.test.", 80, Access.CONNECT, time.time()) == grant
        assert book.find("s", "u", "a.test", 80, Access.CONNECT, time.time()) is None
        unsubscribe = book.subscribe(lambda grants: gone.extend(g.id for g in grants))
        await asyncio.to_thread(store.revoke, [grant.id])
        await asyncio.sleep(1.0)  # two polls
        unsubscribe()
        return gone

    assert asyncio.run(scenario()) == [grant.id]
    assert book.find("s", "t", "a.test", 80, Access.CONNECT, time.time()) is None
    store.close()


def test_blocking_a_host_outranks_the_profile_cuts_what_is_open_and_undoing_it_lets_it_in(
    tmp_path: Path,
) -> None:
    """The Network tab's "Block this host": a remembered refusal for the profile. The next
    request of a running session is refused at the proxy (the server never sees it), an
    open tunnel to the host is cut, and revoking the block (its undo) lets the host in
    again."""
    import docker

    from app.egress.bridge import Egress
    from tests.netsupport import DictSecrets

    store = StateStore(tmp_path / "state.db")
    book = NetworkGrants(store, EventBus())
    client = docker.from_env()
    egress = Egress(client, secrets=DictSecrets({}), broker=None, grants=book)
    upstream = RecordingServer()
    with upstream, harness(tmp_path, profile(upstream.port), session="s1", grants=book) as proxy:
        egress._proxies.add(proxy.proxy)  # as the bridge registers a session's proxy
        assert get(proxy.port, "files.test", upstream.port) == 200
        tunnel = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        tunnel.sendall(f"CONNECT files.test:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert b" 200 " in tunnel.recv(4096)
        grant = proxy.call(egress.block_host("t", "files.test", upstream.port, proxy.bus))
        tunnel.settimeout(5)
        assert tunnel.recv(4096) == b""  # cut at once
        tunnel.close()
        assert get(proxy.port, "files.test", upstream.port) == 403
        seen_while_blocked = len(upstream.seen.requests)
        # Listed where the user's other network answers are: the profile's, a refusal.
        stored = store.network_grant(grant.id)
        assert stored is not None and not stored.allowed and stored.profile == "t"
        # Undo: revoking it (as the Grants tab or `airlock revoke` does).
        store.revoke([grant.id])
        proxy.call(book.refresh())
        assert get(proxy.port, "files.test", upstream.port) == 200
        events = proxy.wait_events(4)
    assert seen_while_blocked == 1
    assert [r["path"] for r in upstream.seen.requests] == ["/x", "/x"]
    refused = [e for e in events if e.kind is EventKind.NET_REFUSED]
    assert [e.details["rule"] for e in refused] == ["host-blocked", f"grant:{grant.id}"]
    assert [e.details["decided_by"] for e in refused] == ["user", "grant"]
    assert all(e.details["profile"] == "t" for e in events)
    added = [e for e in proxy.events if e.kind is EventKind.GRANT_ADDED]
    assert added[0].details["allowed"] is False and added[0].details["profile"] == "t"
    client.close()
    store.close()
