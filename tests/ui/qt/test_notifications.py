"""Notifications on a real session bus (dbus-daemon), served by a small notification server:
the request's agent words arrive without markup, and the Review and Deny actions come back;
what agents run into (refusals, held uploads, denials) is notified at a bounded pace."""

from __future__ import annotations

import asyncio
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

from app.consent import ConsentBroker, ConsentRequest, RequestKind
from app.events import EventKind
from app.sessions import Supervisor
from tests.ui.qt.conftest import SessionBus, until
from ui.qt.app import build_desktop
from ui.qt.notifications import Notifier
from ui.qt.settings import Settings


class NotificationServer(ServiceInterface):
    """org.freedesktop.Notifications, as far as Airlock uses it."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.received: list[list[Any]] = []

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
        self.received.append([app, summary, body, actions])
        return len(self.received)

    @dbus_signal()
    def ActionInvoked(
        self, notification: int, action: str
    ) -> Annotated[list[Any], DBusSignature("us")]:
        return [notification, action]


def test_request_notification_and_actions(
    run: Callable[..., object], session_bus: SessionBus
) -> None:
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
        first = ConsentRequest(
            "r-1",
            "5e55104d",
            "notes-organizer",
            RequestKind.NETWORK,
            "paste.example:443",
            reason="<b>trust me</b> & go",
        )
        second = ConsentRequest(
            "r-2", "5e55104d", "notes-organizer", RequestKind.FILE_OPEN, "open a file"
        )
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


def test_no_notification_server_is_not_an_error(
    run: Callable[..., object], session_bus: SessionBus
) -> None:
    async def scenario() -> None:
        notifier = await Notifier.connect(session_bus.address)
        assert notifier is not None
        request = ConsentRequest("r-3", "5e55104d", "x", RequestKind.COMMIT, "commit")
        assert await notifier.request(request) is None
        notifier.disconnect()

    run(scenario(), timeout=30)


@pytest.mark.parametrize(
    ("reason", "body"),
    [
        ("sync" + " " * 200 + "Airlock: verified", "sync Airlock: verified"),
        ("a\u200fb\u2028c <i>", "a\\u200fb\\u2028c &lt;i&gt;"),
        ("zero\u200bwidth\u009b", "zero\\u200bwidth\\u009b"),
    ],
)
def test_the_agents_words_in_a_notification_are_one_plain_run(reason: str, body: str) -> None:
    from ui.qt.notifications import _markup_free

    assert _markup_free(reason) == body


@pytest.mark.docker
def test_what_the_agent_ran_into_is_on_the_status_line_and_notified_at_a_pace(
    run: Callable[..., object],
    session_bus: SessionBus,
    supervisor: Supervisor,
    settings: Settings,
) -> None:
    """Refusals, a held upload and denials reach the desktop app as plain lines: the status
    line shows the latest; while the window is hidden, notifications say them, counted
    (1, 10, 100… of a kind) and at most a few in a row; what the user answered in the app
    itself is not told back."""

    async def scenario() -> None:
        server_bus = await MessageBus(bus_address=session_bus.address).connect()
        server = NotificationServer()
        server_bus.export("/org/freedesktop/Notifications", server)
        await server_bus.request_name("org.freedesktop.Notifications")
        notifier = await Notifier.connect(session_bus.address)
        assert notifier is not None
        desktop = build_desktop(supervisor, ConsentBroker(supervisor.bus), settings, notifier)
        desktop.bridge.start()
        bus = supervisor.bus
        try:
            for _ in range(12):
                bus.emit(
                    EventKind.NET_REFUSED,
                    "s1",
                    "api.openai.com:443",
                    rule="not-listed",
                    reason="not in the profile's network rules",
                )
            await until(lambda: len(server.received) == 2, 10, "the refusals")
            bus.emit(
                EventKind.REQUEST_ASKED,
                "s1",
                "up.example:443",
                request="r-1",
                asks="network.upload",
                timeout=120.0,
                size=4096,
            )
            await until(
                lambda: "holding an upload" in desktop.window.statusBar().currentMessage(),
                10,
                "the held upload on the status line",
            )
            bus.emit(
                EventKind.REQUEST_ANSWERED,
                "s1",
                "open a file",
                request="r-2",
                asks="file.open",
                verdict="deny",
                by="dialog",
                lifetime="once",
                paths=[],
            )
            bus.emit(
                EventKind.REQUEST_ANSWERED,
                "s1",
                "up.example:443",
                request="r-1",
                asks="network.upload",
                verdict="deny",
                by="timeout",
                lifetime="once",
                paths=[],
            )
            await until(lambda: len(server.received) == 3, 10, "the upload's outcome")
            bus.emit(
                EventKind.NET_REFUSED, "s1", "pypi.org:443", rule="not-listed", reason="not listed"
            )
            await until(
                lambda: "pypi.org" in desktop.window.statusBar().currentMessage(),
                10,
                "the next refusal on the status line",
            )
            await asyncio.sleep(0.3)
        finally:
            await desktop.close()
            notifier.disconnect()
            server_bus.disconnect()
        bodies = [body for _, _, body, _ in server.received]
        assert bodies == [
            "s1: refused api.openai.com:443: not in the profile's network rules (not in the "
            "profile: allow it in its [network] section, or add a route)",
            "s1: refused api.openai.com:443 ×10: not in the profile's network rules (not in "
            "the profile: allow it in its [network] section, or add a route)",
            "s1: upload to up.example:443 denied (no answer in time): the agent got a refusal",
        ]  # the held upload has its dialog; the fourth line came too soon after three
        assert all(
            summary == "Airlock" and actions == [] for _, summary, _, actions in server.received
        )

    run(scenario(), timeout=60)
