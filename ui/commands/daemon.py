"""`airlock daemon`: a headless supervisor that `airlock run` hands its sessions to.

`airlock run` starts one in the background when none runs (see `start_background`), so that
the next run in a row costs a socket, not a supervisor; that one leaves after an idle
period. Its sessions' questions wait for `airlock ask` (or the terminal's menu), or are
denied at once for clients that say `--ask deny`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from ui.commands.base import Context, add_command

IDLE_SECONDS = 600.0  # a background supervisor with no session nor client for this long ends
START_SECONDS = 15.0


def handle(ctx: Context, args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from app.consent import DenyAll
    from app.handoff import HandoffServer
    from app.questions import AskServer, QuestionQueue, SessionRoutes, ask_socket
    from ui.interactive import notify_questions
    from ui.notices import Notices
    from ui.wiring import open_supervisor

    questions = QuestionQueue()
    routes = SessionRoutes(DenyAll())

    async def serve() -> None:
        with open_supervisor(ctx.dirs, routes, long_running=True) as supervisor:
            server = HandoffServer(
                supervisor,
                ctx.dirs.supervisor_socket,
                Notices(),
                questions=questions,
                routes=routes,
            )
            asking = AskServer(questions, ask_socket(ctx.dirs.runtime))
            await server.start()
            await asking.start()
            notifier = await notify_questions(questions)
            if not args.background:
                print(
                    f"airlock: supervising at {server.path}; `airlock run` now hands its "
                    "sessions here. Ctrl-C stops (and ends their sessions).",
                    file=sys.stderr,
                    flush=True,
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(signum, stop.set)
            try:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    idle = time.monotonic() - server.last_activity
                    if args.idle_exit and not server.busy and idle >= args.idle_exit:
                        break
            finally:
                if notifier is not None:
                    notifier.disconnect()
                await asking.close()
                await server.close()
                await supervisor.aclose()

    asyncio.run(serve())
    return 0


def start_background(ctx: Context, wait: float = START_SECONDS) -> bool:
    """Starts `airlock daemon` in the background (its own session, no terminal, output to a
    log in the state directory) and waits until it takes hand-offs; False if it did not."""
    ctx.dirs.ensure()
    log = ctx.dirs.state / "daemon.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ui.cli",
                "daemon",
                "--background",
                "--idle-exit",
                os.environ.get("AIRLOCK_IDLE_EXIT", str(IDLE_SECONDS)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=dict(os.environ, AIRLOCK_STARTED_BY_RUN="1"),
        )
    socket_path: Path = ctx.dirs.supervisor_socket
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return socket_path.exists()  # another one won the race, or it failed (see log)
        if socket_path.exists():
            return True
        time.sleep(0.02)
    return False


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        sub, "daemon", handle, "supervise sessions in the background: `airlock run` hands them over"
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="end after this long with no session and no client (0: never)",
    )
    parser.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
