"""Malformed calls thrown at the portal (hypothesis): each gets a method return or a named error,
never an unexpected exception; the service stays up; another session's portal is unaffected;
and nothing is ever granted, since the front end here always says no."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, MessageType, Variant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.filechooser import ChooserLimits
from tests.portal.rig import Client, Rig, TempDelivery, allow, deny, portal_rig

T = TypeVar("T")

# Errors a caller may legitimately get. dbus-fast's ServiceError / InternalError would mean
# an exception escaped the portal's checks.
EXPECTED_ERRORS = {
    "org.freedesktop.portal.Error.InvalidArgument",
    "org.freedesktop.DBus.Error.LimitsExceeded",
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.InvalidArgs",
}


class LoopThread:
    """One event loop for the whole module, so that the buses outlive single examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Sessions:
    """Two sessions' portals: `target` takes the fuzz, `bystander` must not notice."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.loop = LoopThread()
        self._stack: list[Any] = []
        self.target, self.attacker = self.loop.run(self._open("a", deny))
        self.bystander, self.neighbour = self.loop.run(self._open("b", allow(runtime)))

    async def _open(self, name: str, decide: Any) -> tuple[Rig, Client]:
        context = portal_rig(
            self.runtime / name,
            decide,
            ChooserLimits(max_outstanding=16, answer_timeout=0.5),
            TempDelivery(),
        )
        rig = await context.__aenter__()
        self._stack.append(context)
        return rig, await rig.client()

    def close(self) -> None:
        async def close_all() -> None:
            for client in (self.attacker, self.neighbour):
                client.disconnect()
            for context in reversed(self._stack):
                await context.__aexit__(None, None, None)

        self.loop.run(close_all())
        self.loop.stop()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sessions]:
    pair = Sessions(tmp_path_factory.mktemp("fuzz"))
    yield pair
    pair.close()


# D-Bus strings cannot hold NUL: such a call cannot even be sent.
chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


def text(min_size: int = 0, max_size: int = 10) -> st.SearchStrategy[str]:
    return st.text(chars, min_size=min_size, max_size=max_size)


texts = text(max_size=40) | text(min_size=500, max_size=700)
names = st.sampled_from(
    [
        "handle_token",
        "accept_label",
        "modal",
        "multiple",
        "directory",
        "filters",
        "current_filter",
        "choices",
        "current_folder",
        "current_name",
        "current_file",
        "files",
    ]
) | text(max_size=12)
patterns = st.lists(st.tuples(st.integers(0, 3), text(max_size=12)), max_size=4)
one_filter = st.tuples(text(max_size=12), patterns).map(list)
choice = st.tuples(
    text(max_size=6),
    text(max_size=6),
    st.lists(st.tuples(text(max_size=4), text(max_size=4)).map(list), max_size=3),
    text(max_size=6),
).map(list)
variants = st.one_of(
    text(max_size=80).map(lambda v: Variant("s", v)),
    st.from_regex(r"[A-Za-z0-9_]{0,70}", fullmatch=True).map(lambda v: Variant("s", v)),
    st.booleans().map(lambda v: Variant("b", v)),
    st.integers(0, 2**32 - 1).map(lambda v: Variant("u", v)),
    st.binary(max_size=300).map(lambda v: Variant("ay", v)),
    st.sampled_from([b"/home/u\0", b"..\0", b"/a/../b\0", b"rel\0", b"\xff\0", b"a/b\0"]).map(
        lambda v: Variant("ay", v)
    ),
    st.lists(st.binary(max_size=20), max_size=5).map(lambda v: Variant("aay", v)),
    st.lists(one_filter, max_size=5).map(lambda v: Variant("a(sa(us))", v)),
    st.integers(65, 3000).map(lambda n: Variant("a(sa(us))", [["f", [[0, "*"]]]] * n)),
    one_filter.map(lambda v: Variant("(sa(us))", v)),
    st.lists(choice, max_size=4).map(lambda v: Variant("a(ssa(ss)s)", v)),
    st.lists(text(max_size=5), max_size=3).map(lambda v: Variant("as", v)),
)
calls = st.tuples(
    st.sampled_from(["OpenFile", "SaveFile", "SaveFiles", "Nonexistent"]),
    text(max_size=20) | text(min_size=300, max_size=400),
    texts,
    st.dictionaries(names, variants, max_size=8)
    | st.dictionaries(text(max_size=8), st.just(Variant("b", True)), min_size=33, max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(calls, min_size=1, max_size=6),
    closes=st.lists(st.text(alphabet="abc_/019", max_size=12), max_size=3),
)
def test_malformed_calls_never_break_the_portal(
    sessions: Sessions,
    batch: list[tuple[str, str, str, dict[str, Variant]]],
    closes: list[str],
) -> None:
    async def attack() -> list[Message]:
        client = sessions.attacker
        replies = await asyncio.gather(
            *(
                client.raw(method, "ssa{sv}", [parent, title, options])
                for method, parent, title, options in batch
            )
        )
        for suffix in closes:
            path = "/org/freedesktop/portal/desktop/request/" + (
                "/".join(p for p in suffix.split("/") if p) or "x"
            )
            replies.append(await client.close_request(path))
        return list(replies)

    for reply in sessions.loop.run(attack()):
        if reply.message_type is MessageType.ERROR:
            assert reply.error_name in EXPECTED_ERRORS, (reply.error_name, reply.body)
            assert "Traceback" not in str(reply.body)
        else:
            assert reply.message_type is MessageType.METHOD_RETURN
            assert reply.body[0].startswith("/org/freedesktop/portal/desktop/request/")
    assert sessions.target.portal.outstanding <= 16


def test_after_the_fuzz_both_sessions_still_serve(sessions: Sessions) -> None:
    async def check() -> None:
        target = await sessions.target.client()
        ping = await target.raw("Ping", "", [], interface="org.freedesktop.DBus.Peer")
        assert ping.message_type is MessageType.METHOD_RETURN
        code, _ = await target.ask_and_wait("OpenFile", "after_fuzz", timeout=10)
        assert code == 1  # its front end says no, as it did all along
        code, results = await sessions.neighbour.ask_and_wait("OpenFile", "neighbour")
        assert code == 0 and results["uris"]
        target.disconnect()

    sessions.loop.run(check())
    # The one session that says no granted nothing; the other granted only what was asked.
    assert sessions.target.delivery.calls == []
    assert len(sessions.bystander.delivery.calls) == 1


def test_a_flood_of_calls_is_capped_and_answered(tmp_path: Path) -> None:
    async def main() -> None:
        async with portal_rig(
            tmp_path / "flood", lambda r: None, ChooserLimits(max_outstanding=8)
        ) as rig:
            clients = [await rig.client() for _ in range(4)]
            replies: list[Message] = []
            # Four connections, each pipelining waves of 50 calls: dbus-fast's client writer
            # treats a full socket buffer as fatal (EAGAIN), which is the client library's
            # limit, not the portal's.
            for wave in range(10):
                replies += await asyncio.gather(
                    *(
                        client.ask("OpenFile", handle_token=Variant("s", f"f{wave}_{i}"))
                        for client in clients
                        for i in range(50)
                    )
                )
            client = clients[0]
            accepted = [r for r in replies if r.message_type is MessageType.METHOD_RETURN]
            refused = {r.error_name for r in replies if r.message_type is MessageType.ERROR}
            assert len(accepted) == 8
            assert refused == {"org.freedesktop.DBus.Error.LimitsExceeded"}
            assert len(rig.front_end.seen) <= 8
            ping = await client.raw("Ping", "", [], interface="org.freedesktop.DBus.Peer")
            assert ping.message_type is MessageType.METHOD_RETURN
            for client in clients:
                client.disconnect()

    asyncio.run(asyncio.wait_for(main(), 120))
