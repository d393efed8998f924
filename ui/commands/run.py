"""`airlock run`: one agent session in the foreground, its output streamed to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from app.errors import AirlockError, SessionError
from app.events import Event, EventBus, EventKind
from app.grants import parse_grant_argument
from app.profiles import parse_duration
from app.review import Review, diff
from app.sessions import LaunchRequest, Supervisor
from ui.commands.base import Context, add_command
from ui.commands.changes import describe, report
from ui.wiring import open_supervisor


class TerminalOutput:
    def write(self, stream: str, data: bytes) -> None:
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()


def notice(event: Event) -> None:
    """What the person at the terminal should know while the agent runs."""
    subject, details = event.subject, event.details
    if event.kind is EventKind.SESSION_STARTED:
        line = f"session {subject} started ({details['profile']}); `airlock stop {subject}` ends it"
    elif event.kind is EventKind.GRANT_SKIPPED:
        line = f"not granted: {subject}: {details.get('reason', '')}"
    elif event.kind is EventKind.SESSION_TIMEOUT:
        line = f"session {subject} ran out of time ({details['seconds']:.0f} s); stopping it"
    elif event.kind is EventKind.SESSION_OOM:
        line = f"session {subject} was killed: it hit its memory limit"
    elif event.kind is EventKind.SESSION_LIMIT:
        line = f"session {subject} hit its {subject} limit ({details.get('count')} times)"
    elif event.kind is EventKind.GRANT_REVOKED:
        line = f"revoked: {subject}"
    else:
        return
    print(f"airlock: {line}", file=sys.stderr, flush=True)


async def run_session(supervisor: Supervisor, request: LaunchRequest) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, task.cancel)
    try:
        result = await supervisor.run(request, TerminalOutput())
    except asyncio.CancelledError:
        print("airlock: interrupted; the session was stopped and removed", file=sys.stderr)
        return 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
    return result.exit_code


def handle(ctx: Context, args: argparse.Namespace) -> int:
    command = tuple(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd) or None
    with open_supervisor(ctx.dirs) as supervisor:
        profile_path = supervisor.catalog.find(args.profile)
        profile = supervisor.catalog.load(args.profile)
        cwd = Path.cwd()
        grants = tuple(parse_grant_argument(g, cwd) for g in args.grant)
        try:
            timeout = parse_duration(args.timeout) if args.timeout else None
        except ValueError as e:
            raise AirlockError(f"--timeout: {e}") from e
        request = LaunchRequest(profile, profile_path, grants, command, timeout)
        supervisor.bus.attach(notice)
        code = asyncio.run(run_session(supervisor, request))
        session = supervisor.last_session
        if session is not None:
            review_after_run(ctx, supervisor.bus, session, profile.approval.commit, args.review)
        return code


def review_after_run(ctx: Context, bus: EventBus, session: str, rule: str, mode: str) -> None:
    """What the agent staged is put in front of the user (or committed, if the profile says
    so explicitly); nothing reaches their files without one or the other."""
    review = Review(ctx.dirs, bus)
    try:
        changeset = review.changes(session)
    except SessionError:
        return
    if not changeset.changes:
        return
    print(f"\nairlock: the agent staged {len(changeset.changes)} change(s):", file=sys.stderr)
    for change in changeset.changes:
        print("  " + describe(change).replace("\n", "\n  "), file=sys.stderr)
    if rule == "auto" and mode != "never":
        report(review.commit(session), "committed")
        return
    interactive = mode == "ask" and sys.stdin.isatty() and sys.stderr.isatty()
    while interactive:
        print("Commit them to your files? [y]es, [N]o, [d]iff: ", end="", file=sys.stderr,
              flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer == "d":
            for change in changeset.changes:
                sys.stderr.writelines(diff(change))
            continue
        if answer in ("y", "yes"):
            report(review.commit(session), "committed")
            return
        break
    print(f"airlock: nothing was changed; review with `airlock changes {session} --diff`, "
          f"then `airlock commit {session}` or `airlock discard {session}`", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "run", handle, "run an agent in a new sandboxed session")
    parser.add_argument("--profile", "-p", required=True,
                        help="a shipped profile name, one in your config dir, or a path")
    parser.add_argument("--grant", "-g", action="append", default=[], metavar="PATH[:ro|:rw]",
                        help="a file or directory the agent may see (repeatable)")
    parser.add_argument("--timeout", metavar="DURATION",
                        help="stop the agent after this long (e.g. 90s, 30m); default: profile")
    parser.add_argument("--review", choices=("ask", "never"), default="ask",
                        help="after the agent ends, ask whether to commit its staged changes "
                             "(ask, on a terminal) or leave them for `airlock commit` (never)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD",
                        help="run this instead of the profile's command")
