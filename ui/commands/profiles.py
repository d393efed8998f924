"""`airlock profiles list` and `airlock profiles check FILE…`."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.errors import ProfileError
from app.profiles import load_profile_file
from ui.commands.base import Context, add_command
from ui.commands.output import print_table
from ui.wiring import open_core


def handle_list(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        rows = []
        for name, path in core.catalog.available():
            try:
                description = load_profile_file(path).description
            except ProfileError as e:
                description = f"(invalid: {e})"
            rows.append([name, description, str(path)])
        print_table(["profile", "description", "file"], rows, "no profiles")
    return 0


def handle_check(ctx: Context, args: argparse.Namespace) -> int:
    failures = 0
    for name in args.files:
        path = Path(name)
        try:
            profile = load_profile_file(path)
            with open_core(ctx.dirs) as core:
                core.catalog.seccomp_path(profile, path)
        except ProfileError as e:
            print(e)
            failures += 1
        else:
            print(f"{path}: ok ({profile.name})")
    return 1 if failures else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "profiles", handle_list, "list agent profiles, or check files")
    group = parser.add_subparsers(dest="profiles_command", metavar="ACTION")
    listing = group.add_parser("list", help="list the available profiles")
    listing.set_defaults(handler=handle_list)
    check = group.add_parser("check", help="validate profile files; one line per file")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=handle_check)
