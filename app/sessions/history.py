"""A session's place in the history (app/history.py): its output log opened at its start, its
counts taken from the event stream as it runs, and at its end all of it kept and the history
trimmed to its bounds."""

from __future__ import annotations

import logging
import shutil

from app.errors import AirlockError
from app.events import EventBus
from app.history import ActivityTally, History, OutputLog
from app.paths import Dirs
from app.store import StateStore

log = logging.getLogger(__name__)


class SessionHistory:
    """What the supervisor keeps of its sessions. Blocking (files, the store): from the loop,
    call `open` and `keep` in a worker thread. `history` and `tally` are what the front ends
    read: an ended session's summary and output, a running one's counts so far."""

    def __init__(self, store: StateStore, dirs: Dirs, bus: EventBus) -> None:
        self._store = store
        self.history = History(store, dirs)
        self.tally = ActivityTally()
        bus.attach(self.tally)

    def open(self, session: str) -> OutputLog:
        """The session's output log, bounded as the history's preferences say."""
        return OutputLog(self.history.output_dir(session), self.history.bounds().output)

    def keep(self, session: str, output: OutputLog | None) -> None:
        """The ended session's place in the history: its output closed, its counts stored,
        and the history trimmed to its bounds. Called after the store recorded its end, so
        the trimming may already let it go; a session that failed before it was recorded
        leaves nothing. A failure is logged: the session has ended all the same."""
        if output is not None:
            output.close()
        activity = self.tally.take(session)
        try:
            if self._store.session(session) is None:
                shutil.rmtree(self.history.output_dir(session), ignore_errors=True)
                return
            self.history.record_activity(session, activity)
            self.history.prune()
        except (AirlockError, OSError) as e:
            log.warning("session %s: its history could not be kept: %s", session, e)
