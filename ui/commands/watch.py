"""`airlock watch`: follow every session's events live, from the audit log any process writes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import IO, Any

from app.audit import AuditFollower, AuditProblem, AuditRecord
from app.text import inert
from ui.commands.base import Context, add_command

POLL_SECONDS = 0.2
_KIND_WIDTH = 15
_SESSION_WIDTH = 12
_COLOURS = {"file": "36", "session": "32", "grant": "33", "stream": "35", "audit": "35"}
_ALARMS = frozenset(
    {
        "session.oom-killed",
        "session.limit-hit",
        "session.timed-out",
        "stream.dropped",
        "file.unwatched",
        "audit.recovered",
        "audit.gap",
    }
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "watch", watch, "Follow events live, of one session or all.")
    parser.add_argument("session", nargs="?", help="only this session (an id or its start)")
    parser.add_argument("--json", action="store_true", help="one JSON record per line")


def watch(ctx: Context, args: argparse.Namespace) -> int:
    follower = AuditFollower(ctx.dirs.audit)
    show = RecordPrinter(sys.stdout, as_json=args.json, with_date=False)
    while True:
        for found in follower.poll():
            if isinstance(found, AuditProblem):
                print(f"airlock: skipped a bad audit record at {found}", file=sys.stderr)
            elif matches(found, args.session):
                show(found)
        sys.stdout.flush()
        time.sleep(POLL_SECONDS)


def matches(record: AuditRecord, session: str | None, since: float | None = None) -> bool:
    if since is not None and record.time < since:
        return False
    return session is None or (record.session or "").startswith(session)


def _value(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"sha256", "size"}:
        return f"sha256:{str(value['sha256'])[:12]}…({value['size']} B)"
    if isinstance(value, str):
        return inert(value)
    return inert(json.dumps(value, ensure_ascii=False))


class RecordPrinter:
    """Writes records as aligned, coloured lines (colour on a terminal only) or as JSON.
    What the agent chose (file names, hosts, output) is shown by app/text.py's policy: one
    line each, controls and invisible characters as visible escapes."""

    def __init__(self, out: IO[str], *, as_json: bool, with_date: bool) -> None:
        self._out = out
        self._json = as_json
        self._date = with_date
        self._colour = out.isatty() and "NO_COLOR" not in os.environ

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour else text

    def __call__(self, record: AuditRecord) -> None:
        if self._json:
            self._out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            return
        when = datetime.fromtimestamp(record.time)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f" if self._date else "%H:%M:%S.%f")[:-3]
        session = inert(record.session or "-")[:_SESSION_WIDTH].ljust(_SESSION_WIDTH)
        kind = inert(record.kind).ljust(_KIND_WIDTH)
        colour = "31" if record.kind in _ALARMS else _COLOURS.get(record.kind.split(".")[0], "0")
        details = dict(record.details)
        count = details.pop("count", 1)
        parts = [inert(record.subject)]
        if isinstance(count, int) and count > 1:
            parts.append(f"×{count}")
        parts += [f"{key}={_value(value)}" for key, value in details.items()]
        line = "  ".join(
            [self._paint("2", stamp), session, self._paint(colour, kind), " ".join(parts)]
        )
        self._out.write(line + "\n")
