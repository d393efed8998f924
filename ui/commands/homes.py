"""`airlock homes`: the agent homes kept per profile (`[home] persist = true`)."""

from __future__ import annotations

import argparse

from app.errors import AirlockError
from ui.commands.base import Context, add_command
from ui.commands.output import print_json, print_table, when


def handle(ctx: Context, args: argparse.Namespace) -> int:
    from app.homes import kept_homes, remove_home
    from app.store import StateStore

    if args.action == "rm":
        if not args.profile:
            raise AirlockError("airlock homes rm: name the profile whose home to remove")
        store = StateStore(ctx.dirs.database)
        try:
            live = {r.profile for r in store.sessions(live_only=True)}
        finally:
            store.close()
        path = remove_home(ctx.dirs, args.profile, live)
        print(f"removed the kept home of {args.profile} ({path})")
        return 0
    homes = kept_homes(ctx.dirs)
    if args.json:
        print_json(
            [
                {"profile": h.profile, "path": str(h.path), "bytes": h.size, "used_at": h.used_at}
                for h in homes
            ]
        )
        return 0
    print_table(
        ["profile", "size", "last used", "path"],
        [[h.profile, f"{h.size / 1024**2:.1f} MiB", when(h.used_at), str(h.path)] for h in homes],
        "no kept homes",
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        sub, "homes", handle, "list the agent homes kept per profile, or remove one"
    )
    parser.add_argument("action", nargs="?", choices=("list", "rm"), default="list")
    parser.add_argument("profile", nargs="?", help="for rm: whose home to remove")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
