"""`airlock audit show | verify | export`: read, check and hand over the audit log."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from app import ocsf
from app.audit import AuditError, AuditProblem, export, records, verify
from app.forward import AuditForwarder, Destination, ForwardConfig, ForwardError, load_config
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
    check.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="an exported file, native or OCSF (default: the log)",
    )
    out = add_command(
        actions, "export", export_log, "Write the whole chain as one JSON-lines file."
    )
    out.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    out.add_argument(
        "--format",
        choices=("native", "ocsf"),
        default="native",
        help="Airlock's own records (default), or OCSF 1.3.0 events that carry them",
    )
    forward = add_command(
        actions,
        "forward",
        forward_log,
        "Send the log's records to syslog as they are written (RFC 5424).",
    )
    forward.add_argument(
        "--to",
        metavar="DEST",
        help="unix:/dev/log, udp://HOST:PORT or tcp://HOST:PORT (default: audit.toml's [forward])",
    )
    forward.add_argument("--format", choices=("native", "ocsf"), help="the message body")
    forward.add_argument(
        "--once",
        action="store_true",
        help="forward what is not yet delivered, then exit (default: keep following)",
    )


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
    result = ocsf.verify(path) if path.is_file() and ocsf.is_export(path) else verify(path)
    if result.problem is not None:
        print(f"airlock: audit log broken at {result.problem}", file=sys.stderr)
        print(f"{result.records} records before it chain correctly", file=sys.stderr)
        return 1
    print(f"ok: {result.records} records in {result.segments} file(s); head {result.head}")
    return 0


def export_log(ctx: Context, args: argparse.Namespace) -> int:
    def write(out: BinaryIO) -> int:
        if args.format == "ocsf":
            return ocsf.export(ctx.dirs.audit, out, ocsf.Origin.here())
        return export(ctx.dirs.audit, out)

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
    print(f"exported {count} records", file=sys.stderr)
    return 0


def forward_log(ctx: Context, args: argparse.Namespace) -> int:
    config = load_config(ctx.dirs.config)
    if args.to is not None:
        config = ForwardConfig(
            Destination.parse(args.to),
            config.format if config else "native",
            config.facility if config else "authpriv",
        )
    if config is None:
        raise ForwardError(
            f"nowhere to forward to: give --to, or a [forward] table in"
            f" {ctx.dirs.config / 'audit.toml'}"
        )
    if args.format is not None:
        config = ForwardConfig(config.destination, args.format, config.facility)
    forwarder = AuditForwarder(ctx.dirs.audit, config, ocsf.Origin.here())
    if args.once:
        count = forwarder.run(once=True)
        print(f"forwarded {count} records to {config.destination}", file=sys.stderr)
        return 0
    print(f"forwarding the audit log to {config.destination} (Ctrl-C ends)", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        forwarder.run()
    print(f"forwarded {forwarder.sent} records", file=sys.stderr)
    return 0
