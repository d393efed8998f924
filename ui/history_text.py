"""What the history says of a session, as text both front ends show: the command line
(`airlock session`) and the desktop app's detail pane. No Qt here."""

from __future__ import annotations

import time

from app.history import SessionSummary, human_size
from app.sessions.sight import SessionSight
from app.store import SessionRecord
from app.text import printable


def clock(timestamp: float | None, with_date: bool = False) -> str:
    if not timestamp:
        return ""
    return time.strftime(
        "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(timestamp)
    )


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def status_text(record: SessionRecord) -> str:
    if record.live:
        return "running"
    reason = record.reason or str(record.state)
    said = (f"exited with status {record.exit_code}", "exited normally")
    # The supervisor's words already give the code of a plain exit: not said twice.
    code = "" if record.exit_code is None or reason in said else f" (exit {record.exit_code})"
    return f"{reason}{code}"


def summary_text(summary: SessionSummary) -> str:
    """What a session read, changed and sent, as the detail pane says it."""
    record, activity = summary.record, summary.activity
    lines = [
        f"{record.profile} · session {record.id} · {status_text(record)}",
        f"Started {clock(record.started_at, True)}"
        + (
            f", ended {clock(record.ended_at, True)} after {duration_text(summary.duration)}"
            if record.ended_at is not None
            else ""
        ),
        "",
        "Read:",
    ]
    if summary.grants:
        lines += [
            f"  • {g.path}  ({'read and write' if str(g.mode) == 'rw' else 'read only'}"
            + (f", seen at {g.inside}" if g.inside != str(g.path) else "")
            + (", revoked" if g.revoked and record.live else "")
            + ")"
            for g in summary.grants
        ]
    else:
        lines.append("  nothing was granted")
    lines.append(f"  {activity.reads} file read(s) seen")
    lines += [
        "",
        "Changed:",
        f"  {activity.writes} write(s) seen, staged for review",
        f"  {summary.committed} file(s) committed to your files in {summary.commits} commit(s)",
        f"  {summary.waiting} change(s) still waiting for your review"
        if summary.waiting
        else "  nothing left to review",
        "",
        "Sent:",
        f"  {activity.requests} network request(s), {activity.refused} refused; "
        f"{human_size(activity.bytes_up)} sent, {human_size(activity.bytes_down)} received",
    ]
    lines += [
        f"  • {printable(h.host)}: {h.requests} request(s)"
        + (f", {h.refused} refused" if h.refused else "")
        + f", {human_size(h.up)} sent"
        for h in activity.hosts
    ]
    lines += ["", f"Asked {activity.questions} question(s)"]
    return "\n".join(lines)


def sight_text(sight: SessionSight | None, live: bool = False) -> str:
    """What a running session can see right now."""
    if sight is None:
        return (
            "It runs in another Airlock process (`airlock run` without the app): its "
            "grants are listed in the Grants tab."
            if live
            else "The session has ended: it sees nothing any more."
        )
    lines = ["Files and folders:"]
    lines += [
        f"  • {p.path}  ({'read and write' if str(p.mode) == 'rw' else 'read only'}, "
        f"at {p.inside} inside, "
        + (f"until {clock(p.until, True)}" if p.until else str(p.lifetime))
        + ")"
        for p in sight.paths
    ] or ["  none"]
    lines += ["", "Hosts:"]
    lines += [
        f"  • {printable(h.host)}:{','.join(map(str, h.ports))}  — {h.how}" for h in sight.hosts
    ] or ["  none: every connection is refused or asked about"]
    if sight.routes:
        lines += ["", "Routes (your keys added by Airlock, never seen by the agent):"]
        lines += [f"  • {name} → {upstream}" for name, upstream in sight.routes]
    lines += ["", "Uploads held for your answer:"]
    lines += [
        f"  • {printable(u.destination)}: {human_size(u.size)}, since {clock(u.asked_at)}"
        for u in sight.uploads
    ] or ["  none"]
    lines += ["", "Limits:"]
    lines += [f"  • {what}: {value}" for what, value in sight.limits]
    return "\n".join(lines)
