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

# Each module registers its subcommands; imported lazily so `airlock --help` stays fast.
COMMAND_MODULES = (
    "ui.commands.run",
    "ui.commands.sessions",
    "ui.commands.grants",
    "ui.commands.profiles",
    "ui.commands.image",
    "ui.commands.audit",
    "ui.commands.watch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airlock",
        description="Run AI agents in throw-away containers that see only the files you grant.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="airlock: %(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
