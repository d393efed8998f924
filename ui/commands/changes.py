"""`airlock changes`, `commit`, `discard`, `history` and `undo`: review before anything lands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.commit import CommitResult
from app.review import Review, diff
from app.staging import Change, ChangeKind
from app.text import printable
from ui.commands.base import Context, add_command
from ui.commands.output import print_json, print_table, when
from ui.wiring import open_core

SYMBOLS = {ChangeKind.ADDED: "A", ChangeKind.MODIFIED: "M", ChangeKind.DELETED: "D",
           ChangeKind.RENAMED: "R", ChangeKind.MODE: "m"}


def shown(path: object) -> str:
    """A path as safe terminal text: an agent chooses these names."""
    return printable(str(path))


def describe(change: Change) -> str:
    size = "" if change.new_size is None else f"{change.new_size} B"
    if change.kind is ChangeKind.DELETED:
        size = f"{change.old_size or 0} B"
    name = shown(change.path)
    if change.renamed_from:
        name = f"{shown(change.renamed_from)} -> {shown(change.path)}"
    line = f"{SYMBOLS[change.kind]} {change.type:9} {size:>10}  {name}"
    for problem in change.problems:
        line += f"\n    refused: {shown(problem)}"
    return line


def handle_changes(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        changeset = Review(ctx.dirs, core.bus).changes(args.session)
    if args.json:
        print_json({"session": changeset.session, "truncated": changeset.truncated,
                    "changes": [c.to_json() for c in changeset.changes]})
        return 0
    if not changeset.changes:
        print(f"no staged changes in {args.session}")
        return 0
    for change in changeset.changes:
        print(describe(change))
        if args.diff:
            sys.stdout.writelines(diff(change))
    if changeset.truncated:
        print("… and more: the listing stops at 50 000 changes")
    blocked = sum(1 for c in changeset.changes if c.problems)
    print(f"{len(changeset.changes)} change(s), {blocked} would be refused; "
          f"`airlock commit {args.session} [PATH…]` applies them")
    return 0


def report(result: CommitResult, verb: str) -> int:
    for path in result.applied:
        print(f"{verb}: {shown(path)}")
    for path, reason in result.refused:
        print(f"refused: {shown(path)}: {shown(reason)}", file=sys.stderr)
    if result.commit is not None and result.applied:
        print(f"commit {result.commit.id} ({len(result.applied)} path(s)); "
              f"`airlock undo {result.commit.id}` reverts it")
    elif not result.refused:
        print("nothing to do")
    return 1 if result.refused else 0


def handle_commit(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        result = Review(ctx.dirs, core.bus).commit(args.session, [Path(p) for p in args.paths])
    return report(result, "committed")


def handle_discard(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        dropped = Review(ctx.dirs, core.bus).discard(args.session, [Path(p) for p in args.paths])
    for change in dropped:
        print(f"discarded: {shown(change.path)}")
    if not dropped:
        print("nothing to discard")
    return 0


def handle_history(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        records = Review(ctx.dirs, core.bus).history()
    if args.json:
        print_json([r.to_json() for r in records])
        return 0
    rows = [[r.id, r.session, when(r.created_at), str(len(r.paths)),
             f"undo of {r.undo_of}" if r.undo_of else
             (f"undone by {r.undone_by}" if r.undone_by else str(r.state))]
            for r in records]
    print_table(["commit", "session", "when", "paths", "state"], rows, "no commits yet")
    return 0


def handle_undo(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        result = Review(ctx.dirs, core.bus).undo(args.commit)
    return report(result, "restored")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "changes", handle_changes, "list a session's staged changes")
    parser.add_argument("session")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--diff", action="store_true", help="show unified diffs of text files")
    parser = add_command(sub, "commit", handle_commit,
                         "apply staged changes (all, or the listed paths) to your files")
    parser.add_argument("session")
    parser.add_argument("paths", nargs="*", metavar="PATH")
    parser = add_command(sub, "discard", handle_discard, "drop staged changes")
    parser.add_argument("session")
    parser.add_argument("paths", nargs="*", metavar="PATH")
    parser = add_command(sub, "history", handle_history, "list past commits")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser = add_command(sub, "undo", handle_undo, "restore what a commit replaced")
    parser.add_argument("commit")
