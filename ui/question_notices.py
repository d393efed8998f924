"""Desktop notifications for questions that wait in a QuestionQueue (an agent owns the
terminal of `airlock run`, or a background supervisor has them): who asks and what, with
actions — "Allow once" for a host or an upload, "Deny" for any — through
org.freedesktop.Notifications on the user's session bus, when there is one with a
notification server. A file pick needs a path, so it says to use `airlock ask`.

Qt-free (dbus-fast only), so that the command line can use it; the desktop app has its own
(ui/qt/notifications.py), with a Review action that brings up its dialog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from app.consent import Answer, ConsentRequest, RequestKind, Verdict, denied
from app.grants import Lifetime
from app.questions import QuestionQueue
from app.text import printable

log = logging.getLogger(__name__)

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
MATCH = f"type='signal',interface='{NAME}',path='{PATH}'"
WHAT = {
    RequestKind.FILE_OPEN: "wants to open files",
    RequestKind.FILE_SAVE: "wants to save a file",
    RequestKind.NETWORK: "wants to connect to {subject}",
    RequestKind.UPLOAD: "wants to upload data to {subject}",
    RequestKind.COMMIT: "wants to write its changes to your files",
}
# Answerable with one click: no path to pick.
ONE_CLICK = frozenset({RequestKind.NETWORK, RequestKind.UPLOAD})


def _markup_free(text: str) -> str:
    # Servers may render a subset of HTML in the body: the agent's words must not be markup.
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class QuestionNotifier:
    """Shows each question of `queue` as a notification and answers it from the actions."""

    def __init__(self, bus: MessageBus, queue: QuestionQueue) -> None:
        self._bus = bus
        self._queue = queue
        self._shown: dict[str, int] = {}  # request id -> notification id
        self._requests: dict[int, ConsentRequest] = {}
        self._early: dict[int, str] = {}  # actions on notifications not yet registered
        self._tasks: set[asyncio.Task[Any]] = set()
        bus.add_message_handler(self._handle)
        queue.on_change(self._changed)

    @classmethod
    async def connect(
        cls, queue: QuestionQueue, address: str | None = None
    ) -> QuestionNotifier | None:
        """None when there is no session bus or no notification server on it."""
        if address is None and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return None
        try:
            bus = await (
                MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SESSION)
            ).connect()
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=[NAME],
                )
            )
            if reply is None or not reply.body or not reply.body[0]:
                bus.disconnect()
                return None
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
        except (OSError, DBusError, ValueError, EOFError) as e:
            log.info("no notifications: %s", e)
            return None
        return cls(bus, queue)

    def _changed(self, _: int) -> None:
        waiting = {request.id: request for request in self._queue.pending()}
        for request_id, request in waiting.items():
            if request_id not in self._shown:
                self._shown[request_id] = 0  # being shown
                self._spawn(self._show(request))
        for request_id in [r for r in self._shown if r not in waiting]:
            notification = self._shown.pop(request_id)
            self._requests.pop(notification, None)
            if notification:
                self._spawn(self._close(notification))

    def _spawn(self, coroutine: Any) -> None:
        with contextlib.suppress(RuntimeError):  # no loop: nothing to show it with
            task = asyncio.get_running_loop().create_task(coroutine)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _show(self, request: ConsentRequest) -> None:
        what = WHAT[request.kind].format(subject=request.subject)
        body = (
            f"Session {request.session}. The agent says (not verified): "
            f"{_markup_free(request.reason) if request.reason else 'no reason given'}."
        )
        actions = ["deny", "Deny"]
        if request.kind in ONE_CLICK:
            actions = ["allow", "Allow once", *actions]
        else:
            body += " Answer with `airlock ask` in a terminal."
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
                f"{printable(request.profile)} {printable(what)}"[:200],
                body[:1000],
                actions,
                {"urgency": Variant("y", 2)},
                0,
            ],
        )
        try:
            reply = await self._bus.call(message)
        except (OSError, DBusError, EOFError) as e:
            log.info("notification not shown: %s", e)
            return
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            return
        notification = int(reply.body[0])
        if request.id in self._shown:
            self._shown[request.id] = notification
            self._requests[notification] = request
            # An action can come in the same read as the reply, before we get here.
            if (early := self._early.pop(notification, None)) is not None:
                self._act(notification, early)
        else:  # answered meanwhile
            await self._close(notification)

    async def _close(self, notification: int) -> None:
        with contextlib.suppress(OSError, DBusError, EOFError):
            await self._bus.call(
                Message(
                    destination=NAME,
                    path=PATH,
                    interface=NAME,
                    member="CloseNotification",
                    signature="u",
                    body=[notification],
                )
            )

    def _handle(self, message: Message) -> Any:
        if (
            message.message_type is not MessageType.SIGNAL
            or message.interface != NAME
            or message.member != "ActionInvoked"
            or message.signature != "us"
        ):
            return None
        notification, action = message.body
        if int(notification) not in self._requests:
            self._early[int(notification)] = str(action)
            return None
        self._act(int(notification), str(action))
        return None

    def _act(self, notification: int, action: str) -> None:
        request = self._requests.get(notification)
        if request is None:
            return
        answer: Answer | None = None
        if action == "deny":
            answer = denied("notification")
        elif action == "allow" and request.kind in ONE_CLICK:
            answer = Answer(Verdict.ALLOW, Lifetime.ONCE, by="notification")
        if answer is not None:
            self._requests.pop(notification, None)
            self._queue.resolve(request.id, answer)

    def disconnect(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            self._bus.disconnect()
