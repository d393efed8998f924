"""Sessions: one hardened, throw-away container per agent run, supervised on one asyncio loop.

The names other parts import are re-exported here; each lives in the module of its job (see
docs/architecture.md)."""

from app.endings import EXIT_TIMEOUT
from app.sessions.control import STOP_GRACE_SECONDS
from app.sessions.engine import ContainerState, DockerEngine, Engine, Listed
from app.sessions.limits import DISK_RESERVE
from app.sessions.model import (
    DrainingOutput,
    ExtensionFactory,
    LaunchRequest,
    Output,
    SessionContext,
    SessionExtension,
    SessionResult,
)
from app.sessions.pump import MAX_EVENT_LINE, OUTPUT_LINES_BURST, OUTPUT_LINES_PER_SECOND
from app.sessions.registry import (
    RunningSession,
    SessionRegistry,
    new_session_id,
    process_alive,
    process_token,
)
from app.sessions.supervisor import Supervisor

__all__ = [
    "DISK_RESERVE",
    "EXIT_TIMEOUT",
    "MAX_EVENT_LINE",
    "OUTPUT_LINES_BURST",
    "OUTPUT_LINES_PER_SECOND",
    "STOP_GRACE_SECONDS",
    "ContainerState",
    "DockerEngine",
    "DrainingOutput",
    "Engine",
    "ExtensionFactory",
    "LaunchRequest",
    "Listed",
    "Output",
    "RunningSession",
    "SessionContext",
    "SessionExtension",
    "SessionRegistry",
    "SessionResult",
    "Supervisor",
    "new_session_id",
    "process_alive",
    "process_token",
]
