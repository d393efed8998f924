"""`airlock sessions` and `airlock stop`."""

from __future__ import annotations

import argparse
import dataclasses

from ui.commands.base import Context, add_command
from ui.commands.output import print_json, print_table, when
from ui.wiring import open_supervisor


def handle_sessions(ctx: Context, args: argparse.Namespace) -> int:
    with open_supervisor(ctx.dirs) as supervisor:
        records = supervisor.live_sessions() if not args.all else supervisor.store.sessions()
        if args.json:
            print_json([dataclasses.asdict(r) for r in records])
            return 0
        rows = [
            [
                r.id,
                r.profile,
                str(r.state),
                when(r.started_at),
                r.reason or "" if not r.live else "running",
                _sandbox(r.sandbox),
            ]
            for r in records
        ]
        print_table(
            ["session", "profile", "state", "started", "status", "sandbox"],
            rows,
            "no sessions running" if not args.all else "no sessions yet",
        )
    return 0


def _sandbox(outcome: str | None) -> str:
    """The self-check's outcome: "verified (N checks)"; a refusal's reason is the status."""
    if outcome is None:
        return "not checked"  # a session from before the check, or one that never started
    return "refused" if outcome.startswith("refused") else outcome


def handle_stop(ctx: Context, args: argparse.Namespace) -> int:
    with open_supervisor(ctx.dirs) as supervisor:
        supervisor.report_swept(supervisor.stop(args.session))
    print(f"stopped session {args.session}")
    return 0


def handle_ps(ctx: Context, args: argparse.Namespace) -> int:
    with open_supervisor(ctx.dirs) as supervisor:
        titles, processes = supervisor.processes(args.session)
    if args.json:
        print_json([dict(zip(titles, row, strict=False)) for row in processes])
    else:
        print_table(titles, processes, "no processes")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "sessions", handle_sessions, "list running sessions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all", action="store_true", help="include ended sessions")
    parser = add_command(sub, "stop", handle_stop, "stop a running session")
    parser.add_argument("session", help="the session id (see `airlock sessions`)")
    parser = add_command(sub, "ps", handle_ps, "list the processes of a running session")
    parser.add_argument("session", help="the session id (see `airlock sessions`)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
