"""Agents by name: a session shown as its profile and a short session id ("codex · 3f2a"),
from the sessions the window was told of and the events that name their profile."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.events import Event
from app.store import SessionRecord

SHORT = 4  # hex digits of the session id kept in a name: enough to tell two runs apart


def agent_name(profile: str | None, session: str | None) -> str:
    if not session:
        return f"{profile} (every session)" if profile else ""
    if not profile:
        return f"session {session}"
    return f"{profile} · {session[:SHORT]}"


class AgentNames:
    """Which profile each session runs, remembered after the session ended (the activity
    and audit of an ended session still name it)."""

    def __init__(self) -> None:
        self.profiles: dict[str, str] = {}

    def learn(self, sessions: Iterable[SessionRecord]) -> bool:
        """Remembers the sessions' profiles; True if any was new."""
        new = False
        for record in sessions:
            if self.profiles.get(record.id) != record.profile:
                self.profiles[record.id] = record.profile
                new = True
        return new

    def learn_events(self, batch: Sequence[Event]) -> bool:
        new = False
        for event in batch:
            profile = event.details.get("profile")
            if event.session and isinstance(profile, str) and event.session not in self.profiles:
                self.profiles[event.session] = profile
                new = True
        return new

    def profile(self, session: str | None) -> str | None:
        return self.profiles.get(session) if session else None

    def name(self, session: str | None) -> str:
        """The agent's name for a session ("" for none)."""
        return agent_name(self.profile(session), session) if session else ""
