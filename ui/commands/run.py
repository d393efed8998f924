"""`airlock run`: one agent session in the foreground, on this terminal (ui/interactive.py:
the agent owns it) or with its streams piped.

When a supervisor is already running (the desktop app, or `airlock daemon`), the session is
handed to it and this process is a thin client; when none runs, one is started in the
background (warm start, ui/commands/daemon.py); with `--in-process` (or if that fails) this
process supervises the session itself. The core is imported only on that last path, so the
others start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import AirlockError
from ui import handoff_client
from ui.commands.base import Context, add_command
from ui.notices import Notices
from ui.terminal import TerminalFilter, reclaim

if TYPE_CHECKING:
    from app.events import Event, EventBus
    from app.sessions import LaunchRequest, Supervisor
    from ui.prompt import OutputGate

CANNOT_ASK = 75  # app.handoff.CANNOT_ASK, without importing the core


class TerminalOutput:
    """The agent's output on this process's stdout and stderr. On a terminal it goes through
    the filter (ui/terminal.py) so that it cannot hide or rewrite Airlock's text; to a file or
    pipe it goes as it is. Held while a question is on the terminal: the pieces wait in
    `drain`, and the agent with them, as behind a paused terminal."""

    def __init__(self, gate: OutputGate | None = None) -> None:
        self._gate = gate
        self.filter = TerminalFilter()
        self._held: list[tuple[str, bytes]] = []
        self._terminal = {"stdout": sys.stdout.isatty(), "stderr": sys.stderr.isatty()}
        self.notices = Notices()

    def write(self, stream: str, data: bytes) -> None:
        if self._gate is not None and self._gate.held:
            self._held.append((stream, data))
            return
        self._emit(stream, data)

    async def drain(self) -> None:
        if self._gate is not None:
            await self._gate.opened()
        held, self._held = self._held, []
        for stream, data in held:
            self._emit(stream, data)

    def _emit(self, stream: str, data: bytes) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        if self._terminal.get(stream):
            data = self.filter.feed(stream, data)
        target.buffer.write(data)
        target.buffer.flush()

    def say(self, text: str) -> None:
        """A line of Airlock's own, after the terminal is put back in a known state."""
        sys.stdout.flush()
        reclaim(sys.stderr, self.filter.mid_line)
        self.filter.reclaimed()
        print(f"airlock: {text}", file=sys.stderr, flush=True)

    def print_notice(self, event: Event) -> None:
        text = self.notices(event)
        if text:
            self.say(text)


async def run_session(
    supervisor: Supervisor, request: LaunchRequest, output: TerminalOutput
) -> int:
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, task.cancel)
    try:
        result = await supervisor.run(request, output)
    except asyncio.CancelledError:
        output.say("interrupted; the session was stopped and removed")
        return 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
    return result.exit_code


def handed_off(ctx: Context, args: argparse.Namespace, command: list[str] | None) -> int | None:
    """Runs the session in the already running supervisor; None if there is none."""
    sock = handoff_client.connect(ctx.dirs.supervisor_socket)
    if sock is None and os.environ.get("AIRLOCK_AUTOSTART", "1") != "0":
        # Warm start: a background supervisor takes this run and the next ones.
        from ui.commands.daemon import start_background

        if start_background(ctx):
            sock = handoff_client.connect(ctx.dirs.supervisor_socket)
    if sock is None:
        return None
    from ui.rawmode import wants_tty, window_size

    tty = wants_tty(args.tty)
    rows, cols = window_size(sys.stdin.fileno())
    terminal = {
        "tty": tty,
        "rows": rows,
        "cols": cols,
        "term": os.environ.get("TERM", ""),
        "colorterm": os.environ.get("COLORTERM", ""),
    }
    request = {
        "profile": args.profile,
        "grants": args.grant,
        "command": command,
        "timeout": args.timeout,
        "cwd": os.getcwd(),
        "ask": args.ask,
        "terminal": terminal,
    }
    try:
        end = handoff_client.run(
            sock,
            request,
            tty,
            lambda s: session_grants(ctx, s),
            lambda s: answer_waiting(ctx.dirs.runtime, s),
        )
    except handoff_client.HandoffRefused as e:
        if e.exit_code == CANNOT_ASK:
            return None  # a headless supervisor: keep the session here, with its prompt
        error = AirlockError(str(e))
        error.exit_code = e.exit_code
        raise error from e
    except KeyboardInterrupt:
        reclaim(sys.stderr)
        print("airlock: interrupted; the session was stopped and removed", file=sys.stderr)
        return 130
    except ConnectionError as e:
        raise AirlockError(f"{e}; the session ended with it") from e
    session = str(end["session"])
    denied = end.get("denied") or []
    if denied:
        from ui.interactive import denial_summary

        summary = denial_summary([(str(k), str(s), str(b)) for k, s, b in denied])
        print(f"airlock: {summary}", file=sys.stderr, flush=True)
    if any((ctx.dirs.sessions / session / "staging").glob("*/root.json")):
        from ui.wiring import open_core  # only now: there is something to review

        with open_core(ctx.dirs) as core:
            review_after_run(ctx, core.bus, session, str(end["rule"]), args.review)
    return int(end["exit"])


def session_grants(ctx: Context, session: str) -> list[str]:
    """For Airlock's menu on a handed-off session's terminal: what the agent may see."""
    import time

    from app.store import StateStore

    store = StateStore(ctx.dirs.database)
    try:
        return [f"  {g.id}  {g.mode}  {g.path}" for g in store.session_grants(session, time.time())]
    finally:
        store.close()


def answer_waiting(runtime: Path, session: str) -> None:
    """For Airlock's menu on a handed-off session's terminal: its questions, one by one."""
    from ui.commands.ask import answer_waiting as answer

    answer(runtime, session)


def handle(ctx: Context, args: argparse.Namespace) -> int:
    command = list(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd) or None
    if args.ask is None:
        args.ask = "tty" if sys.stdin.isatty() else "deny"
    if not args.in_process:
        code = handed_off(ctx, args, command)
        if code is not None:
            return code

    import asyncio

    from app.consent import DenyAll, FrontEnd
    from app.console import Terminal
    from app.grants import parse_grant_argument
    from app.profiles import parse_duration
    from app.questions import QuestionQueue
    from app.sessions import LaunchRequest
    from ui.prompt import TerminalPrompt
    from ui.rawmode import is_terminal, wants_tty, window_size
    from ui.wiring import open_supervisor

    tty = wants_tty(args.tty)
    # The agent reads this terminal: a question must not (see ui/interactive.py).
    questions = QuestionQueue() if args.ask == "tty" and is_terminal(sys.stdin.fileno()) else None
    front_end: FrontEnd = questions or (TerminalPrompt() if args.ask == "tty" else DenyAll())
    output = TerminalOutput(front_end.gate if isinstance(front_end, TerminalPrompt) else None)
    with open_supervisor(ctx.dirs, front_end) as supervisor:
        profile_path = supervisor.catalog.find(args.profile)
        profile = supervisor.catalog.load(args.profile)
        cwd = Path.cwd()
        grants = tuple(parse_grant_argument(g, cwd) for g in args.grant)
        try:
            timeout = parse_duration(args.timeout) if args.timeout else None
        except ValueError as e:
            raise AirlockError(f"--timeout: {e}") from e
        terminal = Terminal.from_environment(tty, *window_size(sys.stdin.fileno()), os.environ)
        request = LaunchRequest(
            profile, profile_path, grants, tuple(command) if command else None, timeout, terminal
        )
        if tty or questions is not None or not is_terminal(sys.stdin.fileno()):
            from ui.interactive import run_interactive

            code = run_interactive(supervisor, request, tty, questions, output.notices, output)
        else:
            supervisor.bus.attach(output.print_notice)
            code = asyncio.run(run_session(supervisor, request, output))
        session = supervisor.last_session
        if session is not None:
            review_after_run(ctx, supervisor.bus, session, profile.approval.commit, args.review)
        return code


def review_after_run(ctx: Context, bus: EventBus, session: str, rule: str, mode: str) -> None:
    """What the agent staged is put in front of the user (or committed, if the profile says
    so explicitly); nothing reaches their files without one or the other."""
    from app.errors import SessionError
    from app.policy import AfterRun, CommitReply, after_run, commit_reply
    from app.review import Review, diff, name_warnings, runs_code
    from ui.commands.changes import counted, describe, report
    from ui.prompt import discard_typed_ahead

    reclaim(sys.stderr)  # the agent's output came before: nothing of it may hide what follows
    review = Review(ctx.dirs, bus)
    try:
        changeset, listing = review.listing(session)
    except SessionError:
        return
    if not changeset.changes:
        return
    warnings, risky = name_warnings(changeset), runs_code(changeset)
    print(f"\nairlock: the agent staged {counted(changeset)}:", file=sys.stderr)
    for change in changeset.changes:
        print(
            "  "
            + describe(change, warnings.get(change.path), risky.get(change.path)).replace(
                "\n", "\n  "
            ),
            file=sys.stderr,
        )
    # What lands is what this list showed (a commit of it refuses anything else).
    shown = listing.fingerprints
    then = after_run(rule, mode, sys.stdin.isatty() and sys.stderr.isatty())  # app/policy.py
    if then is AfterRun.COMMIT:
        # A profile's "auto" never covers what can run code here: that waits for a person.
        report(review.commit(session, (), shown, include_risky=False), "committed")
        return
    choices = (
        f"[y]es but not the {len(risky)} that can run code, [a]ll, [N]o, [d]iff"
        if risky
        else "[y]es, [N]o, [d]iff"
    )
    while then is AfterRun.ASK:
        discard_typed_ahead(sys.stdin.fileno())  # a key meant for an earlier question
        print(
            f"Commit these {counted(changeset)} to your files? {choices}: ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        reply = commit_reply(sys.stdin.readline(), len(risky))
        if reply is CommitReply.DIFF:
            for change in changeset.changes:
                sys.stderr.writelines(diff(change))
            continue
        if reply is not CommitReply.KEEP:
            report(
                review.commit(session, (), shown, include_risky=reply is CommitReply.ALL),
                "committed",
            )
            return
        break
    print(
        f"airlock: nothing was changed; review with `airlock changes {session} --diff`, "
        f"then `airlock commit {session}` (or `--reviewed {listing.id}` for exactly this "
        f"list) or `airlock discard {session}`",
        file=sys.stderr,
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "run", handle, "run an agent in a new sandboxed session")
    parser.add_argument(
        "--profile",
        "-p",
        required=True,
        help="a shipped profile name, one in your config dir, or a path",
    )
    parser.add_argument(
        "--grant",
        "-g",
        action="append",
        default=[],
        metavar="PATH[:ro|:rw]",
        help="a file or directory the agent may see (repeatable); :rw stages "
        "the agent's writes for your review",
    )
    parser.add_argument(
        "--timeout",
        metavar="DURATION",
        help="stop the agent after this long (e.g. 90s, 30m); default: profile",
    )
    parser.add_argument(
        "--review",
        choices=("ask", "never"),
        default="ask",
        help="after the agent ends, ask whether to commit its staged changes "
        "(ask, on a terminal) or leave them for `airlock commit` (never)",
    )
    parser.add_argument(
        "--ask",
        choices=("tty", "deny"),
        help="who answers the agent's requests for files, hosts and uploads: "
        "a prompt on this terminal (default on a terminal) or nobody, "
        "which denies them (default otherwise)",
    )
    tty = parser.add_mutually_exclusive_group()
    tty.add_argument(
        "-t",
        "--tty",
        dest="tty",
        action="store_const",
        const=True,
        help="give the agent a terminal even if this is not one",
    )
    tty.add_argument(
        "-T",
        "--no-tty",
        dest="tty",
        action="store_const",
        const=False,
        help="plain streams for the agent even on a terminal (default: a "
        "terminal when stdin and stdout are both terminals)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="supervise the session in this process even if a supervisor "
        "(the desktop app, `airlock daemon`) is running",
    )
    parser.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- CMD",
        help="run this instead of the profile's command",
    )
