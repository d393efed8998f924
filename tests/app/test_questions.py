"""Questions that wait for `airlock ask`: listed and answered over the supervisor's socket,
denied at their deadline, and a malformed answer is a refusal, never a grant."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from app.consent import ConsentBroker, ConsentRequest, RequestKind, Verdict
from app.events import EventBus
from app.grants import Lifetime
from app.questions import AskServer, QuestionQueue, answer_from_json, request_from_json


def question(timeout: float = 30.0) -> ConsentRequest:
    return ConsentRequest(
        "r-1",
        "s1",
        "agent",
        RequestKind.NETWORK,
        "example.com:443",
        {"host": "example.com"},
        "I need \x1b[2Jit",
        timeout,
    )


async def call(path: Path, message: dict[str, object]) -> dict[str, object]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(json.dumps(message).encode() + b"\n")
    reply = json.loads(await reader.readline())
    writer.close()
    return dict(reply)


def test_a_question_is_listed_and_answered_over_the_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        questions = QuestionQueue()
        server = AskServer(questions, tmp_path / "ask" / "1.sock")
        await server.start()
        broker = ConsentBroker(EventBus(), questions)
        asked = asyncio.ensure_future(broker.ask(question()))
        await asyncio.sleep(0.05)
        listed = await call(server.path, {"op": "list"})
        [shown] = listed["requests"]  # type: ignore[misc]
        assert request_from_json(shown).reason == "I need \\u001b[2Jit"  # escaped
        reply = await call(
            server.path,
            {"op": "answer", "id": "r-1", "answer": {"verdict": "allow", "lifetime": "session"}},
        )
        assert reply == {"ok": True}
        answer = await asked
        assert answer.verdict is Verdict.ALLOW and answer.lifetime is Lifetime.SESSION
        assert answer.by == "airlock ask"
        again = await call(
            server.path, {"op": "answer", "id": "r-1", "answer": {"verdict": "allow"}}
        )
        assert "no longer waiting" in str(again["error"])
        assert (await call(server.path, {"op": "list"})) == {"requests": []}
        await server.close()
        assert not server.path.exists()

    asyncio.run(scenario())


def test_nobody_answering_is_a_denial_at_the_deadline() -> None:
    async def scenario() -> None:
        questions = QuestionQueue()
        answer = await ConsentBroker(EventBus(), questions).ask(question(timeout=0.2))
        assert answer.verdict is Verdict.DENY and answer.by == "timeout"
        assert questions.pending() == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("allow", "a JSON object"),
        ({"verdict": "maybe"}, "maybe"),
        ({"verdict": "allow", "lifetime": "forever"}, "forever"),
        ({"verdict": "allow", "lifetime": "until"}, "needs the time"),
        ({"verdict": "allow", "lifetime": "until", "until": time.time() - 5}, "future"),
        ({"verdict": "allow", "paths": ["relative/x"]}, "absolute"),
        ({"verdict": "allow", "paths": "/etc/passwd"}, "absolute"),
        ({"verdict": "allow", "mode": "rwx"}, "rwx"),
    ],
)
def test_a_malformed_answer_is_refused(answer: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        answer_from_json(answer, by="airlock ask")
