"""The questions' window: forty questions from one agent and one from another are one window,
"1 of 41", listed by agent with their deadlines; the other agent stays in sight; deny all from
an agent, stop an agent; the next question in front starts locked again."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QListWidgetItem

from app.consent import ConsentBroker, ConsentRequest, RequestKind, new_request_id
from app.events import EventBus
from tests.ui.qt.conftest import until
from ui.qt import settings as options
from ui.qt.consent import ConsentDialog, QtFrontEnd, Requester
from ui.qt.question_queue import QuestionQueue
from ui.qt.settings import Settings

FLOODER, OTHER, THIRD = "f100d000", "0the4000", "7h1rd000"


def ask(session: str, host: str) -> ConsentRequest:
    return ConsentRequest(
        new_request_id(),
        session,
        "agent-" + session[:4],
        RequestKind.NETWORK,
        f"{host}:443",
        {},
        "",
        300,
    )


def requester(request: ConsentRequest) -> Requester:
    return Requester(
        request.profile, "", "airlock-agent:bookworm", request.session, time.time() - 30
    )


@pytest.fixture
def front_end(settings: Settings) -> Iterator[QtFrontEnd]:
    settings.set(options.UNLOCK_DELAY, 200)
    settings.set(options.CONSENT_TIMEOUT, 280)
    front_end = QtFrontEnd(settings, requester)
    yield front_end
    # A test that failed half way leaves no question on screen for the next one.
    for dialog in front_end.dialogs():
        dialog.hide()
    front_end.queue.hide()


def question_windows() -> list[object]:
    """The visible windows that put questions: dialogs on their own, questions' windows."""
    return [
        w
        for w in QApplication.topLevelWidgets()
        if w.isVisible() and isinstance(w, ConsentDialog | QuestionQueue)
    ]


def row_of(queue: QuestionQueue, session: str) -> QListWidgetItem:
    """The agents list's line for `session` (lines are ordered by deadline, not by name)."""
    rows = [queue.agents.item(i) for i in range(queue.agents.count())]
    return next(r for r in rows if r.text().split("\n")[0].endswith(f" · {session}"))


def test_a_flood_is_one_window_and_another_agent_stays_in_sight(
    run: Callable[..., object], front_end: QtFrontEnd
) -> None:
    broker = ConsentBroker(EventBus(), front_end)
    stopped: list[str] = []
    front_end.queue.stop_requested.connect(stopped.append)
    queue = front_end.queue

    async def scenario() -> tuple[list[object], list[object], list[object]]:
        first = ask(FLOODER, "host0.example")
        flood = [asyncio.ensure_future(broker.ask(first))]
        await until(lambda: queue.current is not None, what="the first question")
        flood += [
            asyncio.ensure_future(broker.ask(ask(FLOODER, f"host{i}.example")))
            for i in range(1, 40)
        ]
        other = asyncio.ensure_future(broker.ask(ask(OTHER, "api.other.example")))
        thirds = [
            asyncio.ensure_future(broker.ask(ask(THIRD, f"t{i}.third.example"))) for i in range(9)
        ]
        await until(lambda: front_end.pending == 50, what="50 questions from 3 agents")
        # One window, whose front question is still the first one.
        assert question_windows() == [queue]
        assert queue.current is front_end.dialog(first.id)
        assert queue.position.text().startswith("Question 1 of 50")
        assert "1 of 40 from agent-f100" in queue.position.text()
        # Every agent in sight, one line each, with their counts and deadlines.
        rows = [queue.agents.item(i) for i in range(queue.agents.count())]
        by_agent = {r.text().split("\n")[0].split(" · ")[-1]: r for r in rows}
        assert len(rows) == 3 and "40 questions" in by_agent[FLOODER].text()
        other_row = by_agent[OTHER]
        assert "1 question," in other_row.text() and "next denied in 4:" in other_row.text()
        assert "9 questions" in by_agent[THIRD].text()
        viewport = queue.agents.viewport().rect()
        assert all(viewport.contains(queue.agents.visualItemRect(r)) for r in rows)
        # Each of the agent's questions listed with its own deadline.
        assert queue.questions.count() == 40
        assert queue.questions.item(5).text().startswith("4:")
        assert "connect to host5.example:443" in queue.questions.item(5).text()
        # The other agent's question, one click away; locked at first, like any newcomer.
        QTest.mouseClick(
            queue.agents.viewport(),
            Qt.MouseButton.LeftButton,
            pos=queue.agents.visualItemRect(other_row).center(),
        )
        front = queue.current
        assert isinstance(front, ConsentDialog) and front.request.session == OTHER
        assert front.locked and not queue.stop_agent_button.isEnabled()
        # Its place among the 50 goes by deadline (asked in the same moment as the third's).
        assert re.fullmatch(r"Question \d+ of 50  ·  1 of 1 from agent-0the", queue.position.text())
        await until(lambda: not front.locked, what="unlock")
        # Back to the flood: deny every one of its questions at once.
        QTest.mouseClick(
            queue.agents.viewport(),
            Qt.MouseButton.LeftButton,
            pos=queue.agents.visualItemRect(row_of(queue, FLOODER)).center(),
        )
        await until(lambda: queue.current is not None and not queue.current.locked)
        assert queue.current.request.session == FLOODER
        QTest.mouseClick(queue.deny_agent_button, Qt.MouseButton.LeftButton)
        flooded = await asyncio.wait_for(asyncio.gather(*flood), 10)
        # Denying all from one agent leaves the others' questions as they were.
        assert front_end.pending == 10
        assert not any(t.done() for t in thirds)
        if queue.current is not front:  # the third's may come first: both wait alike
            QTest.mouseClick(
                queue.agents.viewport(),
                Qt.MouseButton.LeftButton,
                pos=queue.agents.visualItemRect(row_of(queue, OTHER)).center(),
            )
        await until(lambda: queue.current is front and not front.locked, what="unlock")
        QTest.mouseClick(queue.stop_agent_button, Qt.MouseButton.LeftButton)
        answered = [await other]
        await until(lambda: front_end.pending == 9, what="the third agent's nine")
        await until(lambda: queue.current is not None and not queue.current.locked)
        assert queue.current.request.session == THIRD
        QTest.mouseClick(queue.deny_agent_button, Qt.MouseButton.LeftButton)
        return flooded, answered, list(await asyncio.wait_for(asyncio.gather(*thirds), 10))

    try:
        flooded, others, thirds = run(scenario())  # type: ignore[misc]
    finally:  # nothing left asking for the tests after this one, whatever happened
        queue.close()
    assert {a.by for a in flooded} == {"dialog: all from this agent"}  # type: ignore[attr-defined]
    assert others[0].by == "dialog: agent stopped"  # type: ignore[attr-defined]
    assert {a.by for a in thirds} == {"dialog: all from this agent"}  # type: ignore[attr-defined]
    assert stopped == [OTHER]
    assert not queue.isVisible() and front_end.pending == 0


def test_the_next_question_comes_to_the_front_locked(
    run: Callable[..., object], front_end: QtFrontEnd
) -> None:
    broker = ConsentBroker(EventBus(), front_end)
    queue = front_end.queue

    async def scenario() -> list[object]:
        first, second = ask(FLOODER, "one.example"), ask(FLOODER, "two.example")
        asked = [asyncio.ensure_future(broker.ask(first))]
        await until(lambda: queue.current is not None)
        asked.append(asyncio.ensure_future(broker.ask(second)))
        await until(lambda: front_end.pending == 2)
        one = front_end.dialog(first.id)
        assert one is not None
        await until(lambda: not one.locked)
        QTest.keyClick(one.deny_button, Qt.Key.Key_Return)
        await until(lambda: queue.current is front_end.dialog(second.id))
        two = queue.current
        assert two is not None and two.locked and not two.deny_button.isEnabled()
        assert queue.position.text() == "Question 1 of 1"
        await until(lambda: not two.locked)
        assert QApplication.focusWidget() in (two.deny_button, None)
        QTest.keyClick(two, Qt.Key.Key_Escape)
        return list(await asyncio.gather(*asked))

    answers = run(scenario())
    assert [a.by for a in answers] == ["dialog", "dialog"]  # type: ignore[attr-defined]
