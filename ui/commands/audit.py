"""`airlock audit show | verify | export`: read, check and hand over the audit log."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import socket
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import IO

from app.audit import (
    AuditError,
    AuditFollower,
    AuditProblem,
    AuditRecord,
    export,
    records,
    verify,
)
from app.ocsf import export_ocsf
from app.syslog import SyslogSender, Target, rfc5424
from ui.commands.base import Context, add_command
from ui.commands.watch import RecordPrinter, matches

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser(
        "audit", help="Show, verify or export the audit log.", description="The audit log."
    )
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = add_command(actions, "show", show_log, "Print the recorded events.")
    show.add_argument("--session", help="only this session (an id or its start)")
    show.add_argument(
        "--since",
        type=since,
        metavar="T",
        help="only events from T on: a local time (2024-05-01T09:30) or an age (90s, 15m, 2h, 7d)",
    )
    show.add_argument("--json", action="store_true", help="one JSON record per line")
    check = add_command(
        actions,
        "verify",
        verify_log,
        "Check that no record was edited, dropped, inserted or reordered.",
    )
    check.add_argument("path", nargs="?", type=Path, help="an exported file (default: the log)")
    out = add_command(
        actions, "export", export_log, "Write the whole chain as one JSON-lines file."
    )
    out.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    forward = add_command(
        actions, "forward", forward_log,
        "Send the records to syslog (RFC 5424, OCSF events) as they are written.")
    forward.add_argument("--to", default="/dev/log", metavar="TARGET",
                         help="/dev/log (the default: the journal on systemd), unix:PATH, "
                         "udp://HOST:PORT or tcp://HOST:PORT")
    forward.add_argument("--once", action="store_true",
                         help="send what was not sent yet, then exit (1 if the collector "
                         "did not take it all)")
    out.add_argument("--format", choices=("native", "ocsf"), default="native",
                     help="native records, or OCSF events for a SIEM (each carries its record: "
                     "`airlock audit verify FILE` checks either)")


def since(text: str) -> float:
    """A point in time from an age (`15m`) or a local ISO date/time."""
    if match := re.fullmatch(r"(\d+)([smhd])", text.strip()):
        return time.time() - int(match[1]) * _UNITS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time like 2024-05-01T09:30 nor an age like 15m"
        ) from None


def show_log(ctx: Context, args: argparse.Namespace) -> int:
    show = RecordPrinter(sys.stdout, as_json=args.json, with_date=True)
    bad = 0
    for found in records(ctx.dirs.audit):
        if isinstance(found, AuditProblem):
            bad += 1
            print(f"airlock: skipped a bad audit record at {found}", file=sys.stderr)
        elif matches(found, args.session, args.since):
            show(found)
    return 1 if bad else 0


def verify_log(ctx: Context, args: argparse.Namespace) -> int:
    path = args.path or ctx.dirs.audit
    if not path.exists():
        raise AuditError(f"no audit log at {path}")
    result = verify(path)
    if result.problem is not None:
        print(f"airlock: audit log broken at {result.problem}", file=sys.stderr)
        print(f"{result.records} records before it chain correctly", file=sys.stderr)
        return 1
    print(f"ok: {result.records} records in {result.segments} file(s); head {result.head}")
    return 0


def export_log(ctx: Context, args: argparse.Namespace) -> int:
    skipped = 0

    def write(out: IO[bytes]) -> int:
        nonlocal skipped
        if args.format == "native":
            return export(ctx.dirs.audit, out)
        count, skipped = export_ocsf(ctx.dirs.audit, out, hostname=socket.gethostname(),
                                     version=airlock_version())
        return count

    if args.output is None:
        count = write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        try:
            with args.output.open("xb") as out:
                count = write(out)
        except FileExistsError:
            raise AuditError(f"{args.output} exists; not overwriting it") from None
        except OSError as e:
            raise AuditError(f"cannot write {args.output}: {e.strerror}") from e
    print(f"exported {count} records" + (" as OCSF events" if args.format == "ocsf" else ""),
          file=sys.stderr)
    if skipped:
        print(f"airlock: {skipped} lines were not records and were left out "
              "(`airlock audit verify` says where)", file=sys.stderr)
        return 1
    return 0


def airlock_version() -> str:
    try:
        return importlib.metadata.version("airlock")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


FORWARD_POLL_SECONDS = 0.5
FORWARD_BACKOFF_SECONDS = 5.0
MAX_PENDING = 10_000


def forward_log(ctx: Context, args: argparse.Namespace) -> int:
    """Follows the log and sends each record once the collector takes it, in order; what
    was sent is remembered per target (a cursor in the state directory), so a forwarder
    restarted, or a collector that was away, resumes where it stopped. The log itself is
    only read: nothing here can hold up or lose a record of it."""
    target = Target.parse(args.to)
    sender = SyslogSender(target)
    cursor = ctx.dirs.state / "audit-forward" / (re.sub(r"[^A-Za-z0-9.-]+", "_", args.to)
                                                  .strip("_") + ".seq")
    sent = _read_cursor(cursor)
    follower = AuditFollower(ctx.dirs.audit, from_start=True)
    pending: deque[AuditRecord] = deque()
    hostname, version, pid = socket.gethostname(), airlock_version(), os.getpid()
    count, failing = 0, ""
    try:
        while True:
            if len(pending) < MAX_PENDING:
                for found in follower.poll():
                    if isinstance(found, AuditProblem):
                        print(f"airlock: not forwarded, not a record: {found}", file=sys.stderr)
                    elif found.seq > sent and (not pending or found.seq > pending[-1].seq):
                        pending.append(found)
            why = None
            while pending:
                why = sender.send(rfc5424(pending[0], hostname=hostname, version=version,
                                          procid=pid))
                if why is not None:
                    break
                sent = pending.popleft().seq
                count += 1
            _write_cursor(cursor, sent)
            if args.once:
                if why is not None:
                    print(f"airlock: syslog at {args.to} did not take the records: {why}; "
                          f"{len(pending)} wait for the next run", file=sys.stderr)
                    return 1
                print(f"forwarded {count} records to {args.to}", file=sys.stderr)
                return 0
            if why is not None and why != failing:
                print(f"airlock: syslog at {args.to}: {why}; the records wait, nothing is "
                      "lost", file=sys.stderr)
            elif why is None and failing:
                print(f"airlock: syslog at {args.to} takes records again", file=sys.stderr)
            failing = why or ""
            time.sleep(FORWARD_BACKOFF_SECONDS if why else FORWARD_POLL_SECONDS)
    finally:
        sender.close()


def _read_cursor(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as e:
        raise AuditError(f"cannot read where forwarding stopped ({path}): {e}") from e


def _write_cursor(path: Path, seq: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{seq}\n")
    os.replace(temporary, path)
