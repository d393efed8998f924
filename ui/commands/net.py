"""`airlock net`: every request and tunnel of the egress proxy, live, with per-host totals.

It follows the audit log like `airlock watch` (so it sees sessions of any Airlock process);
`--totals` prints the per-host table of everything logged so far and exits, and the live
view prints the same table when it is interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from app.audit import AuditFollower, AuditProblem, AuditRecord
from app.text import inert
from ui.commands.base import Context, add_command
from ui.commands.watch import POLL_SECONDS, matches

NET_KINDS = frozenset({"net.request", "net.tunnel", "net.refused"})


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "net", handle, "Follow the agents' network traffic live.")
    parser.add_argument("session", nargs="?", help="only this session (an id or its start)")
    parser.add_argument("--json", action="store_true", help="one JSON record per line")
    parser.add_argument(
        "--totals",
        action="store_true",
        help="print per-host totals of everything logged so far and exit",
    )


@dataclass
class HostTotal:
    requests: int = 0
    refused: int = 0
    up: int = 0
    down: int = 0


class Totals:
    def __init__(self) -> None:
        self.hosts: dict[str, HostTotal] = defaultdict(HostTotal)

    def add(self, record: AuditRecord) -> None:
        total = self.hosts[record.subject]
        total.requests += 1
        total.refused += record.kind == "net.refused"
        total.up += _int(record.details.get("bytes_up"))
        total.down += _int(record.details.get("bytes_down"))

    def write(self, out: IO[str]) -> None:
        out.write(f"{'host':<40} {'requests':>8} {'refused':>8} {'up':>10} {'down':>10}\n")
        for host, t in sorted(self.hosts.items(), key=lambda item: -item[1].requests):
            out.write(
                f"{inert(host)[:40]:<40} {t.requests:>8} {t.refused:>8} "
                f"{_size(t.up):>10} {_size(t.down):>10}\n"
            )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


def _seen(details: Mapping[str, object]) -> str:
    """Whether HTTPS was decrypted and seen, or passed as an opaque tunnel."""
    inspection = details.get("inspection")
    return f" ({inspection})" if inspection in ("inspected", "opaque") else ""


def line(record: AuditRecord) -> str:
    d = record.details
    stamp = datetime.fromtimestamp(record.time).strftime("%H:%M:%S.%f")[:-3]
    verdict = "REFUSED" if record.kind == "net.refused" else str(d.get("decision", ""))
    path = d.get("path", "")
    path = path if isinstance(path, str) else "(long path)"
    return inert(
        f"{stamp}  {(record.session or '-')[:12]:<12} {d.get('method', ''):<7} "
        f"{record.subject}{path}{_seen(d)}  {d.get('status', '')}  "
        f"↑{_int(d.get('bytes_up'))} ↓{_int(d.get('bytes_down'))}  "
        f"{float(d.get('duration') or 0) * 1000:.0f} ms  {verdict} [{d.get('rule', '')}]"
        + (f" {d.get('reason', '')}" if record.kind == "net.refused" else "")
    )


def handle(ctx: Context, args: argparse.Namespace) -> int:
    follower = AuditFollower(ctx.dirs.audit, from_start=args.totals)
    totals = Totals()
    try:
        while True:
            for found in follower.poll():
                if isinstance(found, AuditProblem):
                    print(f"airlock: skipped a bad audit record at {found}", file=sys.stderr)
                elif found.kind in NET_KINDS and matches(found, args.session):
                    totals.add(found)
                    if not args.totals:
                        print(
                            json.dumps(found.to_json(), ensure_ascii=False)
                            if args.json
                            else line(found)
                        )
            if args.totals:
                totals.write(sys.stdout)
                return 0
            sys.stdout.flush()
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        if not args.json:
            print()
            totals.write(sys.stdout)
        return 130
