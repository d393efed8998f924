"""`airlock tray`: the desktop app — tray icon, consent dialogs, live views."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.errors import AirlockError
from ui.commands.base import Context, add_command


def handle(ctx: Context, args: argparse.Namespace) -> int:
    # Qt is imported only for this command: the rest of the command line stays light.
    from ui.qt.app import Preset, main

    preset = None
    if args.grant and not args.prepare:
        raise AirlockError("--grant goes with --prepare PROFILE")
    if args.prepare:
        paths = []
        writable = False
        for grant in args.grant:
            text = grant.removesuffix(":rw").removesuffix(":ro")
            writable = writable or grant.endswith(":rw")
            path = Path(os.path.abspath(os.path.expanduser(text)))
            if not path.exists():
                raise AirlockError(f"--grant {grant}: no such file or directory")
            paths.append(path)
        preset = Preset(args.prepare, tuple(paths), writable)
    return main(ctx.dirs, show_window=args.show, preset=preset)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        sub, "tray", handle, "start the desktop app: tray icon, consent dialogs, live views"
    )
    parser.add_argument(
        "--show",
        action="store_true",
        help="open the main window at start (default: only the tray icon)",
    )
    parser.add_argument(
        "--prepare",
        metavar="PROFILE",
        help="open the Launch dialog with this agent chosen, ready to go",
    )
    parser.add_argument(
        "--grant",
        "-g",
        action="append",
        default=[],
        metavar="PATH[:ro|:rw]",
        help="with --prepare: what it may see",
    )
