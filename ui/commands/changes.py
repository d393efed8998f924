"""`airlock changes`, `commit`, `discard`, `history` and `undo`: review before anything lands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.commit import CommitResult
from app.review import Review, diff, mode_text, name_warnings, runs_code, unreviewed
from app.staging import Change, ChangeKind, Changeset
from app.text import printable
from ui.commands.base import Context, add_command
from ui.commands.output import print_json, print_table, when
from ui.wiring import open_core

SYMBOLS = {
    ChangeKind.ADDED: "A",
    ChangeKind.MODIFIED: "M",
    ChangeKind.DELETED: "D",
    ChangeKind.RENAMED: "R",
    ChangeKind.MODE: "m",
}


def shown(path: object) -> str:
    """A path as safe terminal text: an agent chooses these names."""
    return printable(str(path))


def describe(
    change: Change, warnings: list[str] | None = None, risky: list[str] | None = None
) -> str:
    """One change on a line of its own: what, how big, the mode it lands with (before the
    name, which the agent chose and could dress up as a mode), then why it would be
    refused, what about its name to beware of, and what it could run on this machine."""
    size = "" if change.new_size is None else f"{change.new_size} B"
    if change.kind is ChangeKind.DELETED:
        size = f"{change.old_size or 0} B"
    name = shown(change.path)
    if change.renamed_from:
        name = f"{shown(change.renamed_from)} -> {shown(change.path)}"
    line = f"{SYMBOLS[change.kind]} {change.type:9} {size:>10}  {mode_text(change):17}  {name}"
    for problem in change.problems:
        line += f"\n    refused: {shown(problem)}"
    for warning in warnings or ():
        line += f"\n    warning: the name {shown(warning)}"
    for reason in risky or ():
        line += f"\n    runs code: {shown(reason)}"
    return line


def counted(changeset: Changeset) -> str:
    """How many changes, and the id that names exactly these: "3 changes, id 1a2b3c4d5e6f"."""
    count = len(changeset.changes)
    return f"{count} change{'' if count == 1 else 's'}, id {changeset.digest}"


def handle_changes(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        review = Review(ctx.dirs, core.bus)
        changeset, listing = review.listing(args.session)
        warnings = name_warnings(changeset)
        risky = runs_code(changeset)
    if args.json:
        print_json(
            {
                "session": changeset.session,
                "id": listing.id,
                "truncated": changeset.truncated,
                "changes": [
                    dict(
                        c.to_json(),
                        warnings=warnings.get(c.path, []),
                        runs_code=risky.get(c.path, []),
                    )
                    for c in changeset.changes
                ],
            }
        )
        return 0
    if not changeset.changes:
        print(f"no staged changes in {args.session}")
        return 0
    for change in changeset.changes:
        print(describe(change, warnings.get(change.path), risky.get(change.path)))
        if args.diff:
            sys.stdout.writelines(diff(change))
    if changeset.truncated:
        print(f"… and more: the listing stops at {changeset.limit:,} changes".replace(",", " "))
    blocked = sum(1 for c in changeset.changes if c.problems)
    flagged = sum(1 for c in changeset.changes if c.path in warnings)
    notes = [
        text
        for count, text in (
            (blocked, f"{blocked} would be refused"),
            (flagged, f"{flagged} with a name to check"),
            (
                len(risky),
                f"{len(risky)} can run code (committed only if named or with --include-risky)",
            ),
        )
        if count
    ]
    print(
        f"{counted(changeset)}; {', '.join(notes) + '; ' if notes else ''}"
        f"`airlock commit {args.session} --reviewed {listing.id}` applies exactly these"
    )
    return 0


def report(result: CommitResult, verb: str) -> int:
    for path in result.applied:
        print(f"{verb}: {shown(path)}")
    for path, reason in result.refused:
        print(f"refused: {shown(path)}: {shown(reason)}", file=sys.stderr)
    if result.commit is not None and result.applied:
        print(
            f"commit {result.commit.id} ({len(result.applied)} path(s)); "
            f"`airlock undo {result.commit.id}` reverts it"
        )
    elif not result.refused:
        print("nothing to do")
    return 1 if result.refused else 0


def handle_commit(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        review = Review(ctx.dirs, core.bus)
        result = review.commit_listed(
            args.session, [Path(p) for p in args.paths], args.reviewed, args.include_risky
        )
        again = {Path(p) for p, reason in result.refused if unreviewed(reason)}
        current = review.changes(args.session) if again else None
    code = report(result, "committed")
    if current is not None:
        print(
            f"\nnot committed, as you did not see them like this (now {counted(current)}):",
            file=sys.stderr,
        )
        warnings, risky = name_warnings(current), runs_code(current)
        for change in current.changes:
            if change.path in again:
                print(
                    "  "
                    + describe(change, warnings.get(change.path), risky.get(change.path)).replace(
                        "\n", "\n  "
                    ),
                    file=sys.stderr,
                )
        print(
            f"review them with `airlock changes {args.session} --diff`, then commit again",
            file=sys.stderr,
        )
    return code


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
    rows = [
        [
            r.id,
            r.session,
            when(r.created_at),
            str(len(r.paths)),
            f"undo of {r.undo_of}"
            if r.undo_of
            else (f"undone by {r.undone_by}" if r.undone_by else str(r.state)),
        ]
        for r in records
    ]
    print_table(["commit", "session", "when", "paths", "state"], rows, "no commits yet")
    return 0


def handle_undo(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        review = Review(ctx.dirs, core.bus)
        result = review.undo(args.commit)
        session = review.log.record(args.commit).session
    code = report(result, "restored")
    if result.returned:
        print(f"{len(result.returned)} change(s) back for review: `airlock changes {session}`")
    return code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "changes", handle_changes, "list a session's staged changes")
    parser.add_argument("session")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--diff", action="store_true", help="show unified diffs of text files")
    parser = add_command(
        sub,
        "commit",
        handle_commit,
        "apply staged changes (all, or the listed paths) to your files, as "
        "your last `airlock changes` showed them",
    )
    parser.add_argument("session")
    parser.add_argument("paths", nargs="*", metavar="PATH")
    parser.add_argument(
        "--reviewed",
        metavar="ID",
        help="commit exactly what the listing with this id showed (`airlock "
        "changes` prints it); anything that differs is refused",
    )
    parser.add_argument(
        "--include-risky",
        action="store_true",
        help="commit changes that can run code on this machine (git hooks, "
        "shell start-up files, Makefiles, new executables…) too; without "
        "it they are committed only if their path is named",
    )
    parser = add_command(sub, "discard", handle_discard, "drop staged changes")
    parser.add_argument("session")
    parser.add_argument("paths", nargs="*", metavar="PATH")
    parser = add_command(sub, "history", handle_history, "list past commits")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser = add_command(sub, "undo", handle_undo, "restore what a commit replaced")
    parser.add_argument("commit")
