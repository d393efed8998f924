"""Desktop notifications through org.freedesktop.Notifications on the user's session bus,
with actions: "Review" brings the request's dialog up, "Deny" answers it no.

Used while the main window is hidden. Without a notification server the app still works:
the dialogs themselves appear, and the tray icon shows that something waits.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError
from PySide6.QtCore import QObject, Signal

from app.consent import ConsentRequest
from app.text import printable, quoted
from ui.question_notices import MATCH, NAME, PATH, WHAT

log = logging.getLogger(__name__)


def _markup_free(text: str) -> str:
    # Notification servers may render a subset of HTML in the body; the agent's words
    # must not be markup. Runs of spaces are made one: padding must not push the agent's
    # words onto a line of their own, where they would read as Airlock's.
    text = quoted(text[:4000], indent="", width=1_000_000)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier(QObject):
    reviewed = Signal(str)  # a request id: the user chose "Review"
    denied = Signal(str)  # a request id: the user chose "Deny"

    def __init__(self, bus: MessageBus, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._bus = bus
        self._requests: dict[int, str] = {}
        self.sent: list[int] = []
        bus.add_message_handler(self._handle)

    @classmethod
    async def connect(  # type: ignore[override]  # not QObject.connect: a constructor
        cls, address: str | None = None
    ) -> Notifier | None:
        try:
            bus = await (
                MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SESSION)
            ).connect()
            await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[MATCH],
                )
            )
        except (OSError, DBusError, ValueError) as e:
            log.info("no notifications: %s", e)
            return None
        return cls(bus)

    async def request(self, request: ConsentRequest) -> int | None:
        what = WHAT[request.kind].format(subject=request.subject)
        body = _markup_free(request.reason) if request.reason else "No reason given."
        return await self.notify(
            f"{request.profile} {printable(what)}",
            f"Session {request.session}. The agent says: {body}",
            ["review", "Review", "deny", "Deny"],
            request.id,
        )

    async def notify(
        self, summary: str, body: str, actions: list[str], request_id: str = ""
    ) -> int | None:
        message = Message(
            destination=NAME,
            path=PATH,
            interface=NAME,
            member="Notify",
            signature="susssasa{sv}i",
            body=[
                "Airlock",
                0,
                "org.airlock.Airlock",
                summary[:200],
                body[:1000],
                actions,
                {"urgency": Variant("y", 2), "desktop-entry": Variant("s", "airlock")},
                0,
            ],
        )
        try:
            reply = await self._bus.call(message)
        except (OSError, DBusError, EOFError) as e:
            log.info("notification not shown: %s", e)
            return None
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            log.info("notification not shown: %s", reply.body if reply else "no reply")
            return None
        notification = int(reply.body[0])
        self.sent.append(notification)
        if request_id:
            self._requests[notification] = request_id
        return notification

    def _handle(self, message: Message) -> Any:
        if message.message_type is not MessageType.SIGNAL or message.interface != NAME:
            return None
        if message.member == "ActionInvoked" and message.signature == "us":
            notification, action = message.body
            request = self._requests.pop(int(notification), None)
            if request is not None and action == "review":
                self.reviewed.emit(request)
            elif request is not None and action == "deny":
                self.denied.emit(request)
        elif message.member == "NotificationClosed" and message.signature == "uu":
            self._requests.pop(int(message.body[0]), None)
        return None

    def disconnect(self) -> None:  # type: ignore[override]
        with contextlib.suppress(EOFError, OSError):
            self._bus.disconnect()
