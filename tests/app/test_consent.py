"""The consent broker: every way a question can go unanswered ends in a denial."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.consent import (
    Answer,
    ConsentBroker,
    ConsentRequest,
    DenyAll,
    RequestKind,
    Verdict,
    new_request_id,
)
from app.events import EventBus, EventKind
from app.grants import Lifetime


def request(timeout: float = 5.0, reason: str = "I need it") -> ConsentRequest:
    return ConsentRequest(
        new_request_id(),
        "s1",
        "p",
        RequestKind.FILE_OPEN,
        "Open a file",
        {"multiple": False},
        reason,
        timeout,
    )


class Scripted:
    def __init__(
        self, answer: Answer | None = None, delay: float = 0.0, error: Exception | None = None
    ) -> None:
        self.answer_value, self.delay, self.error = answer, delay, error
        self.seen: list[ConsentRequest] = []

    async def answer(self, req: ConsentRequest) -> Answer:
        self.seen.append(req)
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        assert self.answer_value is not None
        return self.answer_value


def ask(broker: ConsentBroker, req: ConsentRequest) -> Answer:
    return asyncio.run(broker.ask(req))


def test_an_allowed_answer_is_returned_and_both_ends_are_events() -> None:
    bus, events = EventBus(), []
    bus.attach(events.append)
    yes = Answer(Verdict.ALLOW, Lifetime.SESSION, paths=(Path("/h/a.md"),), by="dialog")
    answer = ask(ConsentBroker(bus, Scripted(yes)), request())
    assert answer == yes
    asked, answered = events
    assert asked.kind is EventKind.REQUEST_ASKED and answered.kind is EventKind.REQUEST_ANSWERED
    assert answered.details["verdict"] == "allow" and answered.details["paths"] == ["/h/a.md"]


@pytest.mark.parametrize(
    ("front_end", "by"),
    [
        (None, "no front end"),
        (Scripted(Answer(Verdict.ALLOW), delay=5), "timeout"),
        (Scripted(error=RuntimeError("window closed")), "vanished"),
        (DenyAll(), "deny-all"),
    ],
)
def test_silence_means_no(front_end: object, by: str) -> None:
    answer = ask(ConsentBroker(EventBus(), front_end), request(timeout=0.2))  # type: ignore[arg-type]
    assert (answer.verdict, answer.by) == (Verdict.DENY, by)


def test_a_withdrawn_request_is_denied() -> None:
    broker = ConsentBroker(EventBus(), Scripted(Answer(Verdict.ALLOW), delay=5))
    req = request()

    async def scenario() -> Answer:
        pending = asyncio.ensure_future(broker.ask(req))
        await asyncio.sleep(0.05)
        assert [r.id for r in broker.pending] == [req.id]
        assert broker.cancel(req.id)
        return await pending

    answer = asyncio.run(scenario())
    assert (answer.verdict, answer.by) == (Verdict.DENY, "cancelled")
    assert not broker.cancel(req.id)


def test_the_agents_reason_is_made_safe_to_show() -> None:
    req = request(reason="open \x1b[2Jthis\u202efdp.exe\x9b31m\nplease" + "x" * 1000)
    assert "\x1b" not in req.reason and "\u202e" not in req.reason and "\n" not in req.reason
    assert "\x9b" not in req.reason
    assert "\\u001b" in req.reason and "\\u202e" in req.reason
    assert len(req.reason) == 500
