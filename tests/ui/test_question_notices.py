"""Questions that wait for `airlock ask` also show as desktop notifications when a session
bus has a notification server: a host is allowed once or denied from it, a file pick only
denied (it needs a path), and a question answered elsewhere loses its notification."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusDict, DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from app.consent import ConsentBroker, ConsentRequest, RequestKind, Verdict, denied
from app.events import EventBus
from app.questions import QuestionQueue
from ui.question_notices import QuestionNotifier


class NotificationServer(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.received: list[list[Any]] = []
        self.closed: list[int] = []

    @dbus_method()
    def Notify(
        self,
        app: DBusStr,
        replaces: DBusUInt32,
        icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: Annotated[list[str], DBusSignature("as")],
        hints: DBusDict,
        timeout: DBusInt32,
    ) -> DBusUInt32:
        self.received.append([summary, body, actions])
        return len(self.received)

    @dbus_method()
    def CloseNotification(self, notification: DBusUInt32) -> Annotated[None, DBusSignature("")]:
        self.closed.append(notification)

    @dbus_signal()
    def ActionInvoked(
        self, notification: int, action: str
    ) -> Annotated[list[Any], DBusSignature("us")]:
        return [notification, action]


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("dbus-daemon")
    if binary is None:
        pytest.fail("dbus-daemon is missing: `packaging/setup test` installs it")
    read, write = os.pipe()
    process = subprocess.Popen(
        [
            binary,
            "--session",
            "--nofork",
            "--nopidfile",
            f"--print-address={write}",
            f"--address=unix:path={tmp_path / 'bus'}",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        address = pipe.readline().strip()
    yield address
    process.terminate()
    process.wait(10)


async def until(condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no {what}")


def test_questions_show_and_are_answered_from_notifications(session_bus: str) -> None:
    async def scenario() -> None:
        questions = QuestionQueue()
        assert await QuestionNotifier.connect(questions, session_bus) is None  # no server yet
        server_bus = await MessageBus(bus_address=session_bus).connect()
        server = NotificationServer()
        server_bus.export("/org/freedesktop/Notifications", server)
        await server_bus.request_name("org.freedesktop.Notifications")
        notifier = await QuestionNotifier.connect(questions, session_bus)
        assert notifier is not None
        broker = ConsentBroker(EventBus(), questions)
        host = asyncio.ensure_future(
            broker.ask(
                ConsentRequest(
                    "r-1",
                    "5e55104d",
                    "coder",
                    RequestKind.NETWORK,
                    "paste.example:443",
                    reason="<b>trust</b> me",
                )
            )
        )
        await until(lambda: server.received, "notification")
        summary, body, actions = server.received[0]
        assert summary == "coder wants to connect to paste.example:443"
        assert "&lt;b&gt;trust&lt;/b&gt; me" in body and "<b>" not in body
        assert actions == ["allow", "Allow once", "deny", "Deny"]
        server.ActionInvoked(1, "allow")
        answer = await asyncio.wait_for(host, 5)
        assert answer.verdict is Verdict.ALLOW and answer.by == "notification"
        pick = asyncio.ensure_future(
            broker.ask(
                ConsentRequest("r-2", "5e55104d", "coder", RequestKind.FILE_OPEN, "open a file")
            )
        )
        await until(lambda: len(server.received) == 2, "second notification")
        assert server.received[1][2] == ["deny", "Deny"]
        assert "airlock ask" in server.received[1][1]
        server.ActionInvoked(2, "allow")  # not offered for a pick: ignored
        await asyncio.sleep(0.2)
        assert not pick.done()
        server.ActionInvoked(2, "deny")
        assert (await asyncio.wait_for(pick, 5)).verdict is Verdict.DENY
        # Answered elsewhere (`airlock ask`): its notification is withdrawn.
        third = asyncio.ensure_future(
            broker.ask(
                ConsentRequest("r-3", "5e55104d", "coder", RequestKind.NETWORK, "example.com:443")
            )
        )
        await until(lambda: len(server.received) == 3, "third notification")
        questions.resolve("r-3", denied("airlock ask"))
        await third
        await until(lambda: 3 in server.closed, "the notification closed")
        notifier.disconnect()
        server_bus.disconnect()

    asyncio.run(scenario())
