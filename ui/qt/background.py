"""The desktop app's work on the loop: a reference kept to every task it starts, and a task's
failure said on the status line instead of lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from app.errors import AirlockError

log = logging.getLogger(__name__)


class Background:
    """Starts the controllers' coroutines as tasks; `say` is where a failure is told."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def run_soon(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """`spawn`, for callers that do not keep the task."""
        self.spawn(coroutine)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, AirlockError):
            self.say(str(error))
        elif error is not None:
            log.error("background task failed", exc_info=error)
            self.say(f"Something went wrong: {type(error).__name__}: {error}")
