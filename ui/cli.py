"""The `airlock` command line: builds the object graph and dispatches to a subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from app.errors import AirlockError
from app.paths import Dirs
from ui.commands.base import Context

# Which module registers each subcommand. Only the module of the command being run is
# imported (all of them for --help): `airlock run` should not pay for the audit viewer.
COMMANDS = {
    "run": "ui.commands.run",
    "daemon": "ui.commands.daemon",
    "tray": "ui.commands.tray",
    "sessions": "ui.commands.sessions",
    "stop": "ui.commands.sessions",
    "ps": "ui.commands.sessions",
    "grants": "ui.commands.grants",
    "grant": "ui.commands.grants",
    "revoke": "ui.commands.grants",
    "profiles": "ui.commands.profiles",
    "changes": "ui.commands.changes",
    "commit": "ui.commands.changes",
    "discard": "ui.commands.changes",
    "history": "ui.commands.changes",
    "undo": "ui.commands.changes",
    "image": "ui.commands.image",
    "audit": "ui.commands.audit",
    "watch": "ui.commands.watch",
    "net": "ui.commands.net",
    "secret": "ui.commands.secret",
    "ask": "ui.commands.ask",
    "homes": "ui.commands.homes",
    "doctor": "ui.commands.doctor",
}


def _modules_for(argv: list[str]) -> list[str]:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in COMMANDS:
        return [COMMANDS[command]]
    return list(dict.fromkeys(COMMANDS.values()))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airlock",
        description="Run AI agents in throw-away containers that see only the files you grant.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _modules_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="airlock: %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        # watchdog reports inotify events that race its own shutdown as errors: noise here.
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)
    context = Context(dirs=Dirs.for_user())
    try:
        return int(args.handler(context, args))
    except AirlockError as e:
        print(f"airlock: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `airlock … | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        # A bug, or an engine answer we did not expect: one line, the details in the log.
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(
            f"airlock: unexpected error: {type(e).__name__}: {e} "
            "(run with -v -v for details, and please report it)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
