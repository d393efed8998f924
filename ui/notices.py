"""What the person running an agent should hear of what it ran into, one line each: refused
hosts, direct attempts, held uploads and their outcome, denied requests; rate-limited.

Plain Python with no state outside the `Notices` object, so that each front end (the
terminal of `airlock run`, a hand-off's client, the desktop app) keeps its own counts and
gets plain strings. The core is imported only when an event comes, so the command line
starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.events import Event

# Who answered a question no, in words (app/consent.py's `Answer.by`).
WHY = {
    "timeout": "no answer in time",
    "no front end": "nobody to ask",
    "deny-all": "--ask deny: nobody answers",
    "cancelled": "withdrawn",
    "vanished": "the prompt went away",
    "tty": "you said no",
    "dialog": "you said no",
    "notification": "you said no",
    "rule": "a rule of the profile",
    "remembered": "an earlier answer",
    "network blocked": "the network is blocked",
}
APPROVED = {
    "tty": "you approved",
    "dialog": "you approved",
    "rule": "a rule of the profile",
    "remembered": "an earlier answer",
}
# A question denied for a host is followed by the proxy's refusal of the same connection:
# within this long, that refusal is the same news.
SAME_NEWS = 5.0


class Notices:
    """`notice_text`, plus what the agent ran into: an agent whose requests are refused
    often only says "reconnecting…", so the person learns from Airlock which host was
    refused, which upload waits for them, which request was denied, and what to do about
    it. Repeats are counted, not repeated: the first of a kind is said at once, then its
    count at 10, 100, 1 000…"""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._denied_at: dict[tuple[str, str], float] = {}  # (session, host:port) -> time

    def __call__(self, event: Event) -> str | None:
        return self.counted(event) or notice_text(event)

    def counted(self, event: Event) -> str | None:
        """Only what the agent ran into (refusals, holds, denials): the desktop app shows
        the rest in its own views."""
        from app.events import EventKind

        if event.kind is EventKind.NET_REFUSED:
            return self._refused(event)
        if event.kind is EventKind.NET_BLOCKED:
            return self._blocked(event)
        if event.kind is EventKind.REQUEST_ASKED:
            return self._held(event)
        if event.kind is EventKind.REQUEST_ANSWERED:
            return self._answered(event)
        return None

    def _count(self, session: str, what: str, by: int = 1) -> int | None:
        """The new count when it is one to say (1, 10, 100…), else None."""
        key = (session, what)
        before = self._counts.get(key, 0)
        after = self._counts[key] = before + by
        if before == 0:
            return after
        said = 10 ** len(str(before))  # the next power of ten past what was said
        return after if after >= said else None

    def _refused(self, event: Event) -> str | None:
        from app.text import inert

        session = event.session or ""
        denied_at = self._denied_at.pop((session, event.subject), None)
        if denied_at is not None and event.time - denied_at < SAME_NEWS:
            return None  # the denial was said: this is its refusal
        count = self._count(session, event.subject)
        if count is None:
            return None
        reason = str(event.details.get("reason") or "refused")
        times = f" ×{count}" if count > 1 else ""
        hint = ""
        if event.details.get("rule") in ("not-listed", "ip-literal"):
            hint = " (not in the profile: allow it in its [network] section, or add a route)"
        return f"refused {inert(event.subject)}{times}: {inert(reason)[:160]}{hint}"

    def _blocked(self, event: Event) -> str | None:
        from app.text import inert

        by = int(event.details.get("count") or 1)
        count = self._count(event.session or "", "direct", by)
        if count is None:
            return None
        what = "a direct attempt" if count == 1 else f"{count} direct attempts"
        return (
            f"{what} to leave around the proxy (latest: {inert(event.subject)}) went "
            "nowhere: agents reach the network only through Airlock's proxy"
        )

    def _held(self, event: Event) -> str | None:
        """An upload waits for the user (app/egress: a body, a tunnel's bytes, data in a
        query or header — all asked as `network.upload`)."""
        from app.text import inert

        if event.details.get("asks") != "network.upload":
            return None  # a question: the prompt or dialog itself says it
        count = self._count(event.session or "", "held " + event.subject)
        if count is None:
            return None
        times = f" ×{count}" if count > 1 else ""
        size = event.details.get("size")
        amount = f" of {_bytes(size)}" if isinstance(size, int) else ""
        seconds = event.details.get("timeout")
        deadline = (
            f" (denied in {seconds:.0f} s without an answer)"
            if isinstance(seconds, int | float)
            else ""
        )
        return (
            f"holding an upload{amount} to {inert(event.subject)}{times} until it is "
            f"approved{deadline}"
        )

    def _answered(self, event: Event) -> str | None:
        from app.text import inert

        asks = str(event.details.get("asks", ""))
        allowed = event.details.get("verdict") == "allow"
        by = str(event.details.get("by", ""))
        session = event.session or ""
        if asks == "network.upload":
            outcome = "allowed" if allowed else "denied"
            count = self._count(session, f"upload {outcome} {event.subject}")
            if not allowed:
                self._denied_at[(session, event.subject)] = event.time
            if count is None:
                return None
            times = f" ×{count}" if count > 1 else ""
            why = WHY.get(by, by) if not allowed else APPROVED.get(by, by)
            tail = "" if allowed else ": the agent got a refusal"
            return f"upload to {inert(event.subject)}{times} {outcome} ({inert(why)}){tail}"
        if allowed:
            return None
        if asks == "network.host":
            self._denied_at[(session, event.subject)] = event.time
        count = self._count(session, f"denied {asks} {event.subject}")
        if count is None:
            return None
        times = f" ×{count}" if count > 1 else ""
        subject = inert(event.subject)[:120]
        what = (
            f"the agent's request to {subject}"
            if asks.startswith("file.")
            else f"the agent's request for {subject}"
            if asks == "network.host"
            else f"{inert(asks)} {subject}"
        )
        return f"denied {what}{times} ({inert(WHY.get(by, by))})"


def _bytes(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.0f} {unit}"
        size //= 1024
    return f"{size} GB"


def summed_up(event: Event) -> bool:
    """Whether the summary at a session's end (ui/interactive.py's `denial_summary`) says
    this event: a question denied. A notice held back while the agent had the screen is
    then left out rather than said twice."""
    from app.events import EventKind

    return event.kind is EventKind.REQUEST_ANSWERED and event.details.get("verdict") == "deny"


def notice_text(event: Event) -> str | None:
    """What the person at the terminal should know while the agent runs; one line, with what
    the agent chose escaped."""
    from app.events import EventKind
    from app.text import inert

    subject, details = inert(event.subject), event.details
    if event.kind is EventKind.SESSION_STARTED:
        return (
            f"session {subject} started ({inert(details['profile'])}); "
            f"`airlock stop {subject}` ends it"
        )
    if event.kind is EventKind.SANDBOX_VERIFIED and details.get("weaker"):
        # The profile let the session run without part of what was asked: said every time.
        return f"session {subject}: sandbox {inert(details.get('warning', 'weaker than asked'))}"
    if event.kind is EventKind.GRANT_SKIPPED:
        return f"not granted: {subject}: {inert(details.get('reason', ''))}"
    if event.kind is EventKind.SESSION_TIMEOUT:
        return f"session {subject} ran out of time ({details['seconds']:.0f} s); stopping it"
    if event.kind is EventKind.SESSION_OOM:
        return f"session {subject} was killed: it hit its memory limit"
    if event.kind is EventKind.SESSION_LIMIT:
        return (
            f"session {inert(event.session)} hit its {subject} limit "
            f"({inert(details.get('count'))} times)"
        )
    if event.kind is EventKind.GRANT_REVOKED:
        return f"revoked: {subject}"
    if event.kind is EventKind.ACTIVITY_GAP:
        from app.text import printable

        return (
            f"session {event.session}: file activity went unwatched for "
            f"{details.get('seconds', 0):.1f} s ({printable(str(details.get('cause')))}); "
            f"rescanned: {details.get('rescanned', 0)} change(s) in that time"
        )
    if event.kind is EventKind.ACTIVITY_UNWATCHED:
        return (
            f"session {event.session} is partly unwatched: its file activity overflowed "
            f"the watch {details.get('overflows')} times"
        )
    return None
