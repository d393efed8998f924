"""`airlock daemon`: a headless supervisor that `airlock run` hands its sessions to."""

from __future__ import annotations

import argparse
import sys

from ui.commands.base import Context, add_command


def handle(ctx: Context, args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from app.handoff import HandoffServer
    from ui.commands.run import notice_text
    from ui.wiring import open_supervisor

    async def serve() -> None:
        with open_supervisor(ctx.dirs, long_running=True) as supervisor:
            server = HandoffServer(supervisor, ctx.dirs.supervisor_socket, notice_text)
            await server.start()
            print(f"airlock: supervising at {server.path}; `airlock run` now hands its "
                  "sessions here. Ctrl-C stops (and ends their sessions).", file=sys.stderr,
                  flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(signum, stop.set)
            try:
                await stop.wait()
            finally:
                await server.close()
                await supervisor.aclose()

    asyncio.run(serve())
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_command(sub, "daemon", handle,
                "supervise sessions in the background: `airlock run` hands them over")
