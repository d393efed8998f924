#!/usr/bin/python3 -I
"""`airlock-request`, inside the agent's container: the asks of Airlock's MCP server as a
shell command, for agents without an MCP client (aider) and for scripts. It prints the same
answer the MCP tool gives; the exit status is 0 when granted, 1 when not, 2 when nothing
could be asked."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

# /opt/airlock/mcp: the shared code, and the packages it needs beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import airlock_ask

GRANTED = ("The user granted", "The user allowed", "Saved ", "Airlock session ")
NOT_ASKED = ("Airlock could not ask", "Airlock refused", "Not saved", "Not available")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="airlock-request",
        description="Ask the user, through Airlock, for what this sandbox does not give you. "
        "The user sees your reason as your own words and decides.",
    )
    sub = top.add_subparsers(dest="what", required=True)
    files = sub.add_parser("files", help="ask for more files or a folder")
    files.add_argument("--reason", required=True, help="what you need them for (shown)")
    files.add_argument(
        "--write",
        action="store_true",
        help="ask to change them too (changes are staged for review)",
    )
    files.add_argument("--folder", action="store_true", help="ask for a folder")
    files.add_argument(
        "paths", nargs="*", metavar="PATH", help="the files you have in mind (the user still picks)"
    )
    host = sub.add_parser("host", help="ask to reach a host the profile does not list")
    host.add_argument("host", metavar="NAME[:PORT]", help="e.g. docs.python.org:443")
    host.add_argument("--reason", required=True, help="what you need from it (shown)")
    save = sub.add_parser("save", help="hand the user a new file (its content on stdin)")
    save.add_argument("name", help="the suggested file name")
    save.add_argument("--reason", required=True, help="what the file is (shown)")
    sub.add_parser("status", help="what this session has: grants, saves, routes")
    return top


async def ask(args: argparse.Namespace) -> str:
    if args.what == "files":
        return await airlock_ask.request_files(
            args.reason,
            "read-write" if args.write else "read",
            args.folder,
            len(args.paths) > 1,
            tuple(args.paths),
        )
    if args.what == "host":
        name, _, port = args.host.rpartition(":") if ":" in args.host else (args.host, "", "")
        if port and not port.isdigit():
            return f"Airlock could not ask the user: {args.host!r} is not NAME or NAME:PORT"
        return await airlock_ask.request_host(name, int(port or 443), args.reason)
    if args.what == "save":
        return await airlock_ask.save_file(args.reason, args.name, sys.stdin.read())
    return await airlock_ask.status()


def main() -> int:
    args = parser().parse_args()
    answer = asyncio.run(ask(args))
    print(answer)
    if answer.startswith(NOT_ASKED):
        return 2
    return 0 if answer.startswith(GRANTED) else 1


if __name__ == "__main__":
    sys.exit(main())
