"""Commit and undo: approved staged changes applied to the host, crash-safe and reversible.

`journal` records each commit durably, `operations` plans what a commit or undo does (pure),
`apply` does it on the host, `log` (`CommitLog`) runs the three and recovers after a crash.
"""

from app.commit.journal import (
    CommitAction,
    CommitError,
    CommitRecord,
    CommitResult,
    Operation,
    State,
)
from app.commit.log import PAUSE_VARIABLE, CommitLog

__all__ = [
    "PAUSE_VARIABLE",
    "CommitAction",
    "CommitError",
    "CommitLog",
    "CommitRecord",
    "CommitResult",
    "Operation",
    "State",
]
