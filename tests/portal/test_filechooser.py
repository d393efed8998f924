"""The FileChooser portal against a real dbus-daemon, driven by a dbus-fast client that knows
only the public API: the option matrix, the Request object's life, consent and its failures,
and every kind of malformed call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant

from app.consent import Answer, ConsentRequest, RequestKind, Verdict
from app.events import EventKind
from app.grants import Lifetime, Mode
from app.text import escaped
from portal.filechooser import (
    ChooserLimits,
    Method,
    file_uri,
    parse_call,
    request_path,
)
from tests.portal.rig import WHO, Rig, TempDelivery, allow, deny, portal_rig

INVALID = "org.freedesktop.portal.Error.InvalidArgument"


def run(runtime: Path, scenario: Callable[[Rig], Awaitable[None]], **rig: Any) -> None:
    async def main() -> None:
        async with portal_rig(runtime, **rig) as r:
            await scenario(r)

    asyncio.run(asyncio.wait_for(main(), 60))


def filters(*names: str) -> Variant:
    return Variant("a(sa(us))", [[n, [[0, f"*.{n}"], [1, f"text/{n}"]]] for n in names])


# the interface as clients see it


def test_version_property_and_introspection(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        reply = await client.raw(
            "Get",
            "ss",
            ["org.freedesktop.portal.FileChooser", "version"],
            interface="org.freedesktop.DBus.Properties",
        )
        assert reply.body == [Variant("u", 4)]
        xml = await client.raw(
            "Introspect", "", [], interface="org.freedesktop.DBus.Introspectable"
        )
        for method in ("OpenFile", "SaveFile", "SaveFiles"):
            assert f'<method name="{method}">' in xml.body[0]
        assert 'type="a{sv}"' in xml.body[0] and 'direction="out" type="o"' in xml.body[0]

    run(tmp_path, scenario)


def test_open_file_round_trip_with_every_option(tmp_path: Path) -> None:
    picked = tmp_path / "my notes ü#1.md"
    picked.write_text("x")

    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait(
            "OpenFile",
            "tok_1",
            title="Open the notes to summarise",
            accept_label=Variant("s", "_Summarise"),
            modal=Variant("b", False),
            multiple=Variant("b", False),
            directory=Variant("b", False),
            filters=filters("md", "txt"),
            current_filter=Variant("(sa(us))", ["txt", [[0, "*.txt"]]]),
            choices=Variant(
                "a(ssa(ss)s)",
                [
                    ["encoding", "Encoding", [["utf8", "UTF-8"], ["latin1", "Western"]], "latin1"],
                    ["reencode", "Re-encode", [], ""],
                ],
            ),
            current_folder=Variant("ay", b"/home/user/notes\0"),
            unknown_future_option=Variant("s", "ignored"),
        )
        assert code == 0
        assert results["uris"] == ["file:///run/airlock/doc/t0/my%20notes%20%C3%BC%231.md"]
        assert results["choices"] == [["encoding", "latin1"], ["reencode", "false"]]
        assert results["current_filter"] == ["txt", [[0, "*.txt"]]]
        (request,) = rig.front_end.seen
        assert (request.session, request.profile, request.kind) == (
            WHO.session,
            WHO.profile,
            RequestKind.FILE_OPEN,
        )
        assert request.subject == "open a file"
        assert request.reason == "Open the notes to summarise"
        details = request.details
        assert details["image"] == WHO.image and details["mode"] == "ro"
        assert details["accept_label"] == "_Summarise" and details["modal"] is False
        assert details["filters"][0] == {
            "name": "md",
            "patterns": [["glob", "*.md"], ["mime", "text/md"]],
        }
        assert details["current_folder"] == "/home/user/notes"
        assert rig.delivery.calls == [
            ("open", (picked,), (WHO.session, Mode.READ, Lifetime.ONCE, None))
        ]
        kinds = [e.kind for e in rig.events]
        assert kinds == [EventKind.REQUEST_ASKED, EventKind.REQUEST_ANSWERED]
        assert rig.portal.outstanding == 0

    run(tmp_path, scenario, decide=allow(picked))


def test_multiple_files_read_write_for_a_while(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    until = time.time() + 300

    def decide(request: ConsentRequest) -> Answer:
        return Answer(Verdict.ALLOW, Lifetime.UNTIL, until, (a, b), Mode.READ_WRITE, "test")

    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait("OpenFile", "m", multiple=Variant("b", True))
        assert code == 0 and len(results["uris"]) == 2
        assert "current_filter" not in results and "choices" not in results
        assert rig.front_end.seen[0].subject == "open files"
        assert rig.delivery.calls[0][2] == (WHO.session, Mode.READ_WRITE, Lifetime.UNTIL, until)

    run(tmp_path, scenario, decide=decide)


def test_directory_choice(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait("OpenFile", "d", directory=Variant("b", True))
        assert code == 0 and results["uris"] == [f"file:///run/airlock/doc/t0/{tmp_path.name}"]
        assert rig.front_end.seen[0].subject == "open a folder"
        assert rig.front_end.seen[0].details["directory"] is True

    run(tmp_path, scenario, decide=allow(tmp_path))


def test_save_file(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"

    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait(
            "SaveFile",
            "s",
            title="Save the report",
            current_name=Variant("s", "report.txt"),
            current_folder=Variant("ay", b"/work\0"),
            current_file=Variant("ay", b"/work/r.txt\0"),
            filters=filters("txt"),
        )
        assert code == 0
        assert results["uris"] == ["file:///run/airlock/save/t0/report.txt"]
        assert results["current_filter"] == ["txt", [[0, "*.txt"], [1, "text/txt"]]]
        request = rig.front_end.seen[0]
        assert request.kind is RequestKind.FILE_SAVE and request.details["mode"] == "rw"
        assert request.details["current_name"] == "report.txt"
        assert request.details["current_file"] == "/work/r.txt"
        assert rig.delivery.calls == [("save", (target,), (WHO.session, Lifetime.SESSION))]

    run(tmp_path, scenario, decide=allow(target, lifetime=Lifetime.SESSION))


def test_save_files_into_a_chosen_folder(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait(
            "SaveFiles",
            "many",
            files=Variant("aay", [b"a.txt\0", b"b c.txt\0"]),
            choices=Variant("a(ssa(ss)s)", [["zip", "Zip them", [], "true"]]),
        )
        assert code == 0
        assert results["uris"] == [
            "file:///run/airlock/save/t0/a.txt",
            "file:///run/airlock/save/t1/b%20c.txt",
        ]
        assert results["choices"] == [["zip", "true"]]
        assert "current_filter" not in results
        assert rig.delivery.calls[0][1] == (tmp_path / "a.txt", tmp_path / "b c.txt")
        assert rig.front_end.seen[0].subject == "save 2 files"

    run(tmp_path, scenario, decide=allow(tmp_path))


def test_a_missing_handle_token_gets_a_path_under_the_sender(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        reply = await client.ask("OpenFile")
        assert reply.message_type is MessageType.METHOD_RETURN
        sender = client.bus.unique_name
        assert sender is not None
        prefix = f"/org/freedesktop/portal/desktop/request/{sender[1:].replace('.', '_')}/"
        assert reply.body[0].startswith(prefix)

    run(tmp_path, scenario)


# no consent, no file


@pytest.mark.parametrize("decide", [deny, None], ids=["denied", "front-end-raises"])
def test_a_refusal_answers_cancelled(tmp_path: Path, decide: Any) -> None:
    def broken(request: ConsentRequest) -> Answer:
        raise RuntimeError("the dialog crashed")

    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait("OpenFile", "r")
        assert (code, results) == (1, {})
        assert rig.delivery.calls == []

    run(tmp_path, scenario, decide=decide or broken)


def test_a_timeout_answers_cancelled_never_granted(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, _ = await client.ask_and_wait("OpenFile", "slow")
        assert code == 1
        answered = [e for e in rig.events if e.kind is EventKind.REQUEST_ANSWERED]
        assert answered[0].details["by"] == "timeout"
        assert rig.delivery.calls == []

    run(tmp_path, scenario, decide=lambda r: None, limits=ChooserLimits(answer_timeout=0.3))


def test_a_refused_delivery_answers_other(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, results = await client.ask_and_wait("OpenFile", "g")
        assert (code, results) == (2, {})

    run(
        tmp_path,
        scenario,
        decide=allow(tmp_path / "x"),
        delivery=TempDelivery(refuse="x: no such file"),
    )


@pytest.mark.parametrize(
    ("method", "picked", "options"),
    [
        ("OpenFile", 2, {}),  # two files for a single-file request
        ("SaveFile", 2, {}),
        ("SaveFiles", 3, {"files": Variant("aay", [b"a\0", b"b\0"])}),
        ("OpenFile", 0, {}),  # allowed, but nothing picked
    ],
)
def test_an_answer_that_does_not_fit_the_call_answers_other(
    tmp_path: Path, method: str, picked: int, options: dict[str, Variant]
) -> None:
    paths = [tmp_path / f"f{i}" for i in range(picked)]

    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        code, _ = await client.ask_and_wait(method, "n", **options)
        assert code == 2 and rig.delivery.calls == []

    run(tmp_path, scenario, decide=allow(*paths))


# the Request object


def test_close_by_the_caller_withdraws_the_question_without_a_response(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        path = client.expected_path("c")
        response = await client.subscribe(path)
        reply = await client.ask("OpenFile", handle_token=Variant("s", "c"))
        # Exported before the reply: a Close sent right after it finds the object.
        closed = await client.close_request(reply.body[0])
        assert closed.message_type is MessageType.METHOD_RETURN, closed.body
        await asyncio.sleep(0.3)
        assert not response.done()
        assert rig.broker.pending == [] and rig.portal.outstanding == 0
        answered = [e for e in rig.events if e.kind is EventKind.REQUEST_ANSWERED]
        assert [e.details["verdict"] for e in answered] == ["deny"]
        again = await client.close_request(path)
        assert again.message_type is MessageType.ERROR
        assert rig.delivery.calls == []

    run(tmp_path, scenario, decide=lambda r: None)


def test_close_from_another_connection_is_refused(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def scenario(rig: Rig) -> None:
        owner, other = await rig.client(), await rig.client()
        path = owner.expected_path("mine")
        response = await owner.subscribe(path)
        await owner.ask("OpenFile", handle_token=Variant("s", "mine"))
        refused = await other.close_request(path)
        assert refused.message_type is MessageType.ERROR
        assert refused.error_name == "org.freedesktop.DBus.Error.AccessDenied"
        assert rig.portal.outstanding == 1
        release.set()
        assert (await asyncio.wait_for(response, 10))[0] == 0

    async def slow_yes(request: ConsentRequest) -> Answer:
        await release.wait()
        return Answer(Verdict.ALLOW, paths=(tmp_path,), by="test")

    async def main() -> None:
        async with portal_rig(tmp_path) as rig:
            rig.front_end.answer = slow_yes  # type: ignore[method-assign]
            await scenario(rig)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_token_in_use_is_refused_until_its_request_ends(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        first = await client.ask("OpenFile", handle_token=Variant("s", "same"))
        assert first.message_type is MessageType.METHOD_RETURN
        second = await client.ask("OpenFile", handle_token=Variant("s", "same"))
        assert second.message_type is MessageType.ERROR and "in use" in second.body[0]
        # The same token from another connection is another path: no clash.
        other = await rig.client()
        assert (
            await other.ask("OpenFile", handle_token=Variant("s", "same"))
        ).message_type is MessageType.METHOD_RETURN
        await client.close_request(first.body[0])
        third = await client.ask("OpenFile", handle_token=Variant("s", "same"))
        assert third.message_type is MessageType.METHOD_RETURN

    run(tmp_path, scenario, decide=lambda r: None)


def test_outstanding_requests_are_capped_per_session(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        one, two = await rig.client(), await rig.client()
        handles = []
        for i in range(3):
            reply = await (one if i % 2 else two).ask(
                "OpenFile", handle_token=Variant("s", f"t{i}")
            )
            assert reply.message_type is MessageType.METHOD_RETURN
            handles.append(reply.body[0])
        over = await one.ask("SaveFile")
        assert over.error_name == "org.freedesktop.DBus.Error.LimitsExceeded"
        await one.close_request(handles[1])
        assert (await one.ask("SaveFile")).message_type is MessageType.METHOD_RETURN

    run(tmp_path, scenario, decide=lambda r: None, limits=ChooserLimits(max_outstanding=3))


def test_closing_the_portal_withdraws_everything(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        for i in range(3):
            await client.ask("OpenFile", handle_token=Variant("s", f"w{i}"))
        await asyncio.sleep(0.05)
        assert len(rig.broker.pending) == 3
        await rig.portal.close()
        assert rig.portal.outstanding == 0 and rig.broker.pending == []

    run(tmp_path, scenario, decide=lambda r: None)


# malformed calls: a clear error reply, never a crash


BAD_OPTIONS: list[tuple[str, dict[str, Variant], str]] = [
    ("OpenFile", {"multiple": Variant("s", "yes")}, "option 'multiple' must be of type b"),
    ("OpenFile", {"handle_token": Variant("s", "a-b")}, "handle_token"),
    ("OpenFile", {"handle_token": Variant("s", "")}, "handle_token"),
    ("OpenFile", {"handle_token": Variant("s", "x" * 65)}, "handle_token"),
    ("OpenFile", {"handle_token": Variant("u", 7)}, "handle_token"),
    ("OpenFile", {"filters": filters(*[f"f{i}" for i in range(5000)])}, "5000 filters"),
    ("OpenFile", {"filters": Variant("a(sa(us))", [["x", [[7, "*.x"]]]])}, "kind 7"),
    ("OpenFile", {"filters": Variant("a(sa(us))", [["", []]])}, "name is empty"),
    ("OpenFile", {"current_filter": Variant("s", "*.txt")}, "current_filter"),
    ("OpenFile", {"current_folder": Variant("ay", b"/home/\xff\xfe\0")}, "not UTF-8"),
    ("OpenFile", {"current_folder": Variant("ay", b"relative/dir\0")}, "absolute"),
    ("OpenFile", {"current_folder": Variant("ay", b"/a/../etc\0")}, "'..'"),
    ("OpenFile", {"current_folder": Variant("ay", b"/a\0b\0")}, "NUL"),
    ("OpenFile", {"current_folder": Variant("ay", b"\0")}, "empty"),
    ("OpenFile", {"current_folder": Variant("s", "/home")}, "current_folder"),
    (
        "OpenFile",
        {"choices": Variant("a(ssa(ss)s)", [["c", "C", [["a", "A"]], "b"]])},
        "initial selection",
    ),
    ("OpenFile", {"choices": Variant("a(ssa(ss)s)", [["", "C", [], ""]])}, "must not be empty"),
    ("OpenFile", {"choices": Variant("a(ssa(ss)s)", [["c", "C", [], ""]] * 2)}, "twice"),
    ("OpenFile", {f"k{i}": Variant("b", True) for i in range(100)}, "100 entries"),
    ("SaveFile", {"current_name": Variant("s", "..")}, "current_name"),
    ("SaveFile", {"current_name": Variant("s", "../../.bashrc")}, "current_name"),
    ("SaveFile", {"current_name": Variant("s", "/etc/passwd")}, "current_name"),
    (
        "SaveFile",
        {"current_name": Variant("s", "a\u202eexe.txt")},
        "current_name: a control or invisible character (\\u202e)",
    ),
    # app/text.py's whole policy, not only C0 and the bidi embeddings: C1, direction marks,
    # zero-width and format characters, separators, blanks other than the space.
    *[
        ("SaveFile", {"current_name": Variant("s", f"report{c}.pdf")}, escaped(c))
        for c in "\u009b\u0085\u200e\u200f\u061c\u200b\u2060\ufeff\u2028\u2029\u00a0\u3164"
    ],
    (
        "SaveFiles",
        {"files": Variant("aay", [b"ok\0", "b\u200fad".encode() + b"\0"])},
        "files[1]: a control or invisible character (\\u200f)",
    ),
    ("SaveFiles", {"files": Variant("aay", [b"c1\xc2\x9bred\0"])}, "files[0]"),
    ("SaveFile", {"current_name": Variant("s", "x" * 300)}, "255 bytes"),
    ("SaveFile", {"current_file": Variant("ay", b"\xc3\x28\0")}, "not UTF-8"),
    ("SaveFiles", {}, "at least one file name"),
    ("SaveFiles", {"files": Variant("aay", [b"a\0", b"a\0"])}, "twice"),
    ("SaveFiles", {"files": Variant("aay", [b"sub/a\0"])}, "files[0]"),
    ("SaveFiles", {"files": Variant("as", ["a"])}, "option 'files' must be of type aay"),
]


def test_malformed_options_get_an_error_naming_them(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        for method, options, expected in BAD_OPTIONS:
            reply = await client.ask(method, **options)
            assert reply.message_type is MessageType.ERROR, (method, options)
            assert reply.error_name == INVALID, (method, reply.body)
            assert expected in reply.body[0], (expected, reply.body[0])
            assert "Traceback" not in reply.body[0]
        long_title = await client.ask("OpenFile", "t" * 100_000)
        assert long_title.error_name == INVALID and "title" in long_title.body[0]
        assert rig.front_end.seen == [] and rig.portal.outstanding == 0

    run(tmp_path, scenario)


def test_wrong_signatures_and_members_get_errors(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        replies = [
            await client.raw("OpenFile", "ss", ["", "t"]),
            await client.raw("OpenFile", "sss", ["", "t", "x"]),
            await client.raw("SaveFile", "", []),
            await client.raw("Delete", "s", ["x"]),
            await client.raw(
                "Close",
                "",
                [],
                interface="org.freedesktop.portal.Request",
                path="/org/freedesktop/portal/desktop/request/1_1/nope",
            ),
        ]
        for reply in replies:
            assert reply.message_type is MessageType.ERROR
            assert reply.error_name and reply.error_name.startswith("org.freedesktop.DBus.Error")
        # The service is still there.
        assert (
            await client.raw("Ping", "", [], interface="org.freedesktop.DBus.Peer")
        ).message_type is MessageType.METHOD_RETURN

    run(tmp_path, scenario)


def test_the_agent_cannot_reach_beyond_the_portal(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        client = await rig.client()
        owned = await client.driver("RequestName", "su", ["org.freedesktop.portal.Desktop", 2])
        assert owned.error_name == "org.freedesktop.DBus.Error.AccessDenied"
        other = await client.driver("RequestName", "su", ["org.example.Agent", 0])
        assert other.error_name == "org.freedesktop.DBus.Error.AccessDenied"
        assert rig.supervisor.unique_name is not None
        to_supervisor = await client.bus.call(
            Message(
                destination=rig.supervisor.unique_name,
                path="/org/freedesktop/portal/desktop",
                interface="org.example.Private",
                member="Anything",
            )
        )
        assert to_supervisor.error_name == "org.freedesktop.DBus.Error.AccessDenied"

    run(tmp_path, scenario)


# pure pieces


def test_request_path_and_uris() -> None:
    assert request_path(":1.42", "tok") == "/org/freedesktop/portal/desktop/request/1_42/tok"
    assert request_path(":x-y.3", "t") == "/org/freedesktop/portal/desktop/request/x_y_3/t"
    assert file_uri(PurePosixPath("/a b/ü?#%.txt")) == "file:///a%20b/%C3%BC%3F%23%25.txt"


def test_parse_call_defaults() -> None:
    call = parse_call(Method.OPEN, "x11:1234", "Open", {})
    assert (call.token, call.modal, call.multiple, call.directory) == (None, True, False, False)
    assert call.filters == () and call.current_folder is None
    save = parse_call(Method.SAVE, "", "Save", {"multiple": Variant("b", True)})
    assert save.multiple is False  # an option of another method is ignored
    assert parse_call(
        Method.SAVE, "", "", {"current_folder": Variant("ay", b"/w")}
    ).current_folder == PurePosixPath("/w")  # the NUL is optional
