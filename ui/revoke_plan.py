"""What revoking many grants at once takes from whom, in plain Python: which grants "Revoke all
of its access" and "Revoke everything" mean, what each running agent loses (files, folders,
hosts), which agents are stopped, and the words of the confirmation and of the undo.

A remembered refusal (a `NetworkGrant` that is not `allowed`, such as a blocked host) is
never among them: revoking a refusal gives the agent a way out rather than taking one away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from app.grants import AnyGrant, Grant, Mode, NetworkGrant

Name = Callable[[str], str]  # a session as its agent's name ("codex · 5e55")


@dataclass(frozen=True, slots=True)
class Held:
    """A grant about to be revoked, with the facts gathered for it beforehand."""

    grant: AnyGrant
    reaches: tuple[str, ...]  # the running sessions that have it now
    folder: bool = False  # a file grant whose path is a directory on the host


@dataclass(frozen=True, slots=True)
class Loss:
    """What one running agent loses."""

    session: str
    files: int = 0
    folders: int = 0
    hosts: int = 0
    stopped: bool = False  # a read-write folder: the session is stopped


@dataclass(frozen=True, slots=True)
class Confirmation:
    title: str
    question: str
    detail: str  # what each agent loses, said before the click
    button: str  # the destructive button's label
    stops: bool


def takes_away(grant: AnyGrant) -> bool:
    """Whether revoking `grant` takes something from an agent (a refusal is not taken)."""
    return not isinstance(grant, NetworkGrant) or grant.allowed


def of_session(session: str, profile: str, grants: Iterable[AnyGrant]) -> list[AnyGrant]:
    """The grants "Revoke all of its access" revokes, among `grants` (active ones): the
    session's own and those of its profile, files and hosts alike. A profile's grant also
    reaches that profile's other sessions; the confirmation names them."""
    return [
        g
        for g in grants
        if takes_away(g) and (g.session == session or (g.session is None and g.profile == profile))
    ]


def stops(held: Held) -> bool:
    return isinstance(held.grant, Grant) and held.grant.mode is Mode.READ_WRITE and held.folder


def losses(held: Sequence[Held]) -> list[Loss]:
    """Per running agent, in the order they first appear, what it loses."""
    counts: dict[str, list[int]] = {}
    stopped: set[str] = set()
    for item in held:
        # files, folders, hosts
        column = 2 if isinstance(item.grant, NetworkGrant) else 1 if item.folder else 0
        for session in dict.fromkeys(item.reaches):
            counts.setdefault(session, [0, 0, 0])[column] += 1
            if stops(item):
                stopped.add(session)
    return [Loss(s, f, d, h, s in stopped) for s, (f, d, h) in counts.items()]


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _listed(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def loss_line(loss: Loss, name: Name) -> str:
    parts = [
        _count(n, one, many)
        for n, one, many in (
            (loss.files, "file", "files"),
            (loss.folders, "folder", "folders"),
            (loss.hosts, "host", "hosts"),
        )
        if n
    ]
    line = f"•  {name(loss.session)} loses {_listed(parts)}"
    return line + (" and is stopped (a read-write folder)" if loss.stopped else "")


def unused(held: Sequence[Held]) -> int:
    """Grants no running agent has now (a profile's, kept for its later sessions)."""
    return sum(not h.reaches for h in held)


STOP_NOTE = (
    "A read-write folder cannot be taken back from a running agent: the agents marked "
    "stopped are stopped now, and what they changed stays staged for your review. Undo "
    "gives their grants back for later sessions but does not restart them."
)


def _detail(held: Sequence[Held], name: Name, undo_seconds: int) -> str:
    lines = [loss_line(loss, name) for loss in losses(held)]
    if left := unused(held):
        lines.append(
            f"•  also {_count(left, 'grant', 'grants')} for later sessions of a profile "
            "(no running agent has them now)"
        )
    text = "\n".join(lines)
    if any(stops(h) and h.reaches for h in held):
        text += "\n\n" + STOP_NOTE
    return text + f"\n\nFor {undo_seconds} seconds after, Undo gives it all back."


def _button(held: Sequence[Held], plain: str) -> str:
    if any(stops(h) and h.reaches for h in held):
        return plain + " and &stop " + ("the agent" if _stopped_count(held) == 1 else "agents")
    return plain


def _stopped_count(held: Sequence[Held]) -> int:
    return sum(loss.stopped for loss in losses(held))


def confirm_session(
    session: str, held: Sequence[Held], name: Name, undo_seconds: int
) -> Confirmation:
    """The question before "Revoke all of its access" of `session`."""
    return Confirmation(
        title="Revoke all of its access?",
        question=f"Revoke everything {name(session)} was given "
        f"({_count(len(held), 'grant', 'grants')})?",
        detail=_detail(held, name, undo_seconds),
        button=_button(held, "&Revoke all"),
        stops=_stopped_count(held) > 0,
    )


def confirm_everything(held: Sequence[Held], name: Name, undo_seconds: int) -> Confirmation:
    """The question before the tray's "Revoke everything"."""
    agents = len(losses(held))
    return Confirmation(
        title="Revoke everything?",
        question=f"Revoke every grant ({len(held)})? "
        + (
            f"{_count(agents, 'running agent', 'running agents')} "
            f"{'loses' if agents == 1 else 'lose'} every file, folder and host you gave."
            if agents
            else "No agent is running now."
        ),
        detail=_detail(held, name, undo_seconds),
        button=_button(held, "&Revoke everything"),
        stops=_stopped_count(held) > 0,
    )


def revoked_text(revoked: int, stopped: Sequence[str], name: Name) -> str:
    """What the undo bar says after the revocation."""
    text = f"Revoked {_count(revoked, 'grant', 'grants')}"
    if stopped:
        text += (
            f"; {_listed([name(s) for s in dict.fromkeys(stopped)])} stopped (what "
            f"{'it' if len(set(stopped)) == 1 else 'they'} staged is kept for review)"
        )
    return text
