"""`airlock sessions`, `airlock session`, `airlock forget`, `airlock stop` and `airlock ps`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from app.errors import AirlockError
from app.history import human_size
from app.text import inert
from ui.commands.base import Context, add_command
from ui.commands.output import print_json, print_table, when
from ui.history_text import duration_text, status_text, summary_text
from ui.terminal import TerminalFilter
from ui.wiring import open_core, open_supervisor


def handle_sessions(ctx: Context, args: argparse.Namespace) -> int:
    with open_supervisor(ctx.dirs) as supervisor:
        records = supervisor.live_sessions() if not args.all else supervisor.store.sessions()
        if args.json:
            print_json(
                [
                    {
                        **dataclasses.asdict(r),
                        "duration": None if r.ended_at is None else r.ended_at - r.started_at,
                    }
                    for r in records
                ]
            )
            return 0
        rows = [
            [
                r.id,
                r.profile,
                str(r.state),
                when(r.started_at),
                duration_text(None if r.ended_at is None else r.ended_at - r.started_at),
                inert(status_text(r)),
                _sandbox(r.sandbox),
            ]
            for r in records
        ]
        print_table(
            ["session", "profile", "state", "started", "duration", "status", "sandbox"],
            rows,
            "no sessions running" if not args.all else "no sessions yet",
        )
    return 0


def _sandbox(outcome: str | None) -> str:
    """The self-check's outcome: "verified (N checks)"; a refusal's reason is the status."""
    if outcome is None:
        return "not checked"  # a session from before the check, or one that never started
    return "refused" if outcome.startswith("refused") else outcome


def handle_session(ctx: Context, args: argparse.Namespace) -> int:
    from app.history import History, HistoryBounds

    with open_core(ctx.dirs) as core:
        history = History(core.store, ctx.dirs)
        if args.session is None:
            bounds = history.bounds()
            if args.keep is not None or args.days is not None or args.output_kib is not None:
                try:
                    bounds = HistoryBounds(
                        args.keep if args.keep is not None else bounds.sessions,
                        args.days if args.days is not None else bounds.days,
                        args.output_kib * 1024 if args.output_kib is not None else bounds.output,
                    )
                except ValueError as e:
                    raise AirlockError(str(e)) from e
                history.set_bounds(bounds)
                history.prune()
            print(
                f"the history keeps the last {bounds.sessions} ended sessions, none older than "
                f"{bounds.days:g} days, and of each the last {human_size(bounds.output)} of "
                "its output (sessions whose changes wait for review are kept)"
            )
            return 0
        if args.output:
            output = history.output(args.session)
            if output.cut:
                print(output.cut_line(), file=sys.stderr)
            screen = TerminalFilter()
            for stream, data in output.pieces:
                sys.stdout.buffer.write(screen.feed(stream, data))
            sys.stdout.flush()
            return 0
        summary = history.summary(args.session)
    if args.json:
        print_json(
            {
                "session": dataclasses.asdict(summary.record),
                "duration": summary.duration,
                "activity": summary.activity.to_json(),
                "grants": [
                    {"path": str(g.path), "mode": str(g.mode), "inside": g.inside}
                    for g in summary.grants
                ],
                "commits": summary.commits,
                "committed": summary.committed,
                "waiting": summary.waiting,
                "output": {"kept": summary.output_kept, "cut": summary.output_cut},
            }
        )
        return 0
    print(inert_lines(summary_text(summary)))
    kept = human_size(summary.output_kept)
    cut = f" ({human_size(summary.output_cut)} before it not kept)" if summary.output_cut else ""
    print(f"\nOutput: {kept} kept{cut}: `airlock session {summary.record.id} --output`")
    if summary.waiting:
        print(f"Review: `airlock changes {summary.record.id}`")
    return 0


def inert_lines(text: str) -> str:
    return "\n".join(inert(line) for line in text.split("\n"))


def handle_forget(ctx: Context, args: argparse.Namespace) -> int:
    from app.history import History

    with open_core(ctx.dirs) as core:
        History(core.store, ctx.dirs).forget(args.session)
    print(f"forgot session {args.session}: its record, counts and output")
    return 0


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
    parser = add_command(
        sub,
        "session",
        handle_session,
        "what a session read, changed and sent, and its output; or how much history is kept",
    )
    parser.add_argument("session", nargs="?", help="the session id (see `airlock sessions --all`)")
    parser.add_argument("--output", action="store_true", help="print what it printed")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--keep", type=int, help="keep this many ended sessions (default 200)")
    parser.add_argument("--days", type=float, help="forget sessions older than this (default 30)")
    parser.add_argument(
        "--output-kib", type=int, help="KiB of each session's output kept (default 2048)"
    )
    parser = add_command(sub, "forget", handle_forget, "remove an ended session from the history")
    parser.add_argument("session", help="the session id (see `airlock sessions --all`)")
    parser = add_command(sub, "stop", handle_stop, "stop a running session")
    parser.add_argument("session", help="the session id (see `airlock sessions`)")
    parser = add_command(sub, "ps", handle_ps, "list the processes of a running session")
    parser.add_argument("session", help="the session id (see `airlock sessions`)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
