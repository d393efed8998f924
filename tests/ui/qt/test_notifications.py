"""Notifications on a real session bus (dbus-daemon), served by a small notification server:
the request's agent words arrive without markup, and the Review and Deny actions come back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusDict,
    DBusInt32,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from app.consent import ConsentRequest, RequestKind
from tests.ui.qt.conftest import SessionBus, until
from ui.qt.notifications import Notifier


class NotificationServer(ServiceInterface):
    """org.freedesktop.Notifications, as far as Airlock uses it."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.received: list[list[Any]] = []

    @dbus_method()
    def Notify(self, app: DBusStr, replaces: DBusUInt32, icon: DBusStr, summary: DBusStr,
               body: DBusStr, actions: Annotated[list[str], DBusSignature("as")],
               hints: DBusDict, timeout: DBusInt32) -> DBusUInt32:
        self.received.append([app, summary, body, actions])
        return len(self.received)

    @dbus_signal()
    def ActionInvoked(self, notification: int, action: str
                      ) -> Annotated[list[Any], DBusSignature("us")]:
        return [notification, action]


def test_request_notification_and_actions(run: Callable[..., object],
                                          session_bus: SessionBus) -> None:
    async def scenario() -> None:
        server_bus = await MessageBus(bus_address=session_bus.address).connect()
        server = NotificationServer()
        server_bus.export("/org/freedesktop/Notifications", server)
        await server_bus.request_name("org.freedesktop.Notifications")
        notifier = await Notifier.connect(session_bus.address)
        assert notifier is not None
        reviewed: list[str] = []
        denied: list[str] = []
        notifier.reviewed.connect(reviewed.append)
        notifier.denied.connect(denied.append)
        first = ConsentRequest("r-1", "5e55104d", "notes-organizer", RequestKind.NETWORK,
                               "paste.example:443", reason="<b>trust me</b> & go")
        second = ConsentRequest("r-2", "5e55104d", "notes-organizer", RequestKind.FILE_OPEN,
                                "open a file")
        one = await notifier.request(first)
        two = await notifier.request(second)
        assert (one, two) == (1, 2)
        _, summary, body, actions = server.received[0]
        assert summary == "notes-organizer wants to connect to paste.example:443"
        assert "&lt;b&gt;trust me&lt;/b&gt; &amp; go" in body and "<b>" not in body
        assert actions == ["review", "Review", "deny", "Deny"]
        server.ActionInvoked(one, "review")
        server.ActionInvoked(two, "deny")
        await until(lambda: reviewed and denied, 5, "the actions")
        assert reviewed == ["r-1"] and denied == ["r-2"]
        notifier.disconnect()
        server_bus.disconnect()

    run(scenario(), timeout=30)


def test_no_notification_server_is_not_an_error(run: Callable[..., object],
                                                session_bus: SessionBus) -> None:
    async def scenario() -> None:
        notifier = await Notifier.connect(session_bus.address)
        assert notifier is not None
        request = ConsentRequest("r-3", "5e55104d", "x", RequestKind.COMMIT, "commit")
        assert await notifier.request(request) is None
        notifier.disconnect()

    run(scenario(), timeout=30)


@pytest.mark.parametrize(("reason", "body"), [
    ("sync" + " " * 200 + "Airlock: verified", "sync Airlock: verified"),
    ("a\u200fb\u2028c <i>", "a\\u200fb\\u2028c &lt;i&gt;"),
    ("zero\u200bwidth\u009b", "zero\\u200bwidth\\u009b"),
])
def test_the_agents_words_in_a_notification_are_one_plain_run(reason: str, body: str) -> None:
    from ui.qt.notifications import _markup_free

    assert _markup_free(reason) == body
