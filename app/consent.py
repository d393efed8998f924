"""Consent: the questions Airlock puts to the user. The core owns each question as a future; a
front end (a Qt dialog, a terminal prompt, a rule) only answers it. Silence means no: a
timeout, a front end that fails or vanishes, or no front end at all, all deny."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from app.events import EventBus, EventKind
from app.grants import Lifetime, Mode
from app.text import printable

log = logging.getLogger(__name__)

MAX_REASON = 500  # characters of the agent's own words kept for display


class RequestKind(StrEnum):
    FILE_OPEN = "file.open"
    FILE_SAVE = "file.save"
    NETWORK = "network.host"
    UPLOAD = "network.upload"
    COMMIT = "commit"


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """One question. `reason` is the agent's own text: untrusted, shown as such, never
    interpreted. `details` holds kind-specific, JSON-ready values (filters, mode, host,
    size, sha256, a safe preview, findings…)."""

    id: str
    session: str
    profile: str
    kind: RequestKind
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    timeout: float = 120.0
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))
        object.__setattr__(self, "reason", printable(self.reason)[:MAX_REASON])

    @property
    def deadline(self) -> float:
        return self.created_at + self.timeout


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    lifetime: Lifetime = Lifetime.ONCE
    until: float | None = None
    paths: tuple[Path, ...] = ()  # for file requests: what the user picked
    mode: Mode = Mode.READ
    by: str = ""  # who answered: "dialog", "tty", "rule", "timeout", "vanished", …

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


def denied(by: str) -> Answer:
    return Answer(Verdict.DENY, by=by)


class FrontEnd(Protocol):
    """Something that can put a request in front of the user."""

    async def answer(self, request: ConsentRequest) -> Answer: ...


class DenyAll:
    """`--ask deny`: for scripts, every question is answered no."""

    async def answer(self, request: ConsentRequest) -> Answer:
        return denied("deny-all")


def new_request_id() -> str:
    return "r-" + secrets.token_hex(6)


class ConsentBroker:
    """Routes requests to the current front end and enforces the deny-by-default rules."""

    def __init__(
        self,
        bus: EventBus,
        front_end: FrontEnd | None = None,
        rules: Callable[[ConsentRequest], Answer | None] | None = None,
    ) -> None:
        self._bus = bus
        self._front_end = front_end
        self._rules = rules  # a profile's own answers (app/rules.py), tried first
        self._pending: dict[str, tuple[ConsentRequest, asyncio.Task[Answer]]] = {}

    def set_front_end(self, front_end: FrontEnd | None) -> None:
        """Swap who answers (the desktop app arriving or leaving). Requests already shown
        stay with the front end that has them."""
        self._front_end = front_end

    @property
    def pending(self) -> list[ConsentRequest]:
        return [request for request, _ in self._pending.values()]

    async def ask(self, request: ConsentRequest) -> Answer:
        size = request.details.get("size")  # an upload's: what the notices say it holds
        self._bus.emit(
            EventKind.REQUEST_ASKED,
            request.session,
            request.subject,
            request=request.id,
            asks=str(request.kind),
            timeout=request.timeout,
            **({"size": size} if isinstance(size, int) else {}),
        )
        answer = await self._answer(request)
        self._bus.emit(
            EventKind.REQUEST_ANSWERED,
            request.session,
            request.subject,
            request=request.id,
            asks=str(request.kind),
            verdict=str(answer.verdict),
            by=answer.by,
            lifetime=str(answer.lifetime),
            paths=[str(p) for p in answer.paths],
        )
        return answer

    async def _answer(self, request: ConsentRequest) -> Answer:
        if self._rules is not None:
            try:
                ruled = self._rules(request)
            except Exception:
                log.exception("profile rules failed on request %s; asking instead", request.id)
                ruled = None
            if ruled is not None:
                return ruled
        front_end = self._front_end
        if front_end is None:
            return denied("no front end")
        task = asyncio.ensure_future(front_end.answer(request))
        self._pending[request.id] = (request, task)
        try:
            return await asyncio.wait_for(task, timeout=max(0.0, request.deadline - time.time()))
        except TimeoutError:
            return denied("timeout")
        except asyncio.CancelledError:
            if task.cancelled() and not _current_task_cancelling():
                return denied("cancelled")
            raise
        except Exception:
            log.exception("front end failed on request %s; denying it", request.id)
            return denied("vanished")
        finally:
            self._pending.pop(request.id, None)

    def cancel(self, request_id: str) -> bool:
        """Withdraws a pending request (the agent closed it); its answer is a denial."""
        entry = self._pending.get(request_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task and task.cancelling())
