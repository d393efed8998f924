"""`airlock grants`, `airlock grant` and `airlock revoke`."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from app.errors import AirlockError, GrantError
from app.events import EventKind
from app.grants import AnyGrant, Lifetime, NetworkGrant, grant_for, parse_grant_argument
from app.profiles import parse_duration
from ui.commands.base import Context, add_command
from ui.commands.output import print_json, print_table, when
from ui.wiring import open_core, open_supervisor


def grant_json(grant: AnyGrant) -> dict[str, object]:
    if isinstance(grant, NetworkGrant):
        return {
            "id": grant.id,
            "host": grant.host,
            "port": grant.port,
            "access": str(grant.access),
            "allowed": grant.allowed,
            "lifetime": str(grant.lifetime),
            "session": grant.session,
            "profile": grant.profile,
            "created_at": grant.created_at,
            "expires_at": grant.expires_at,
            "revoked_at": grant.revoked_at,
        }
    return {
        "id": grant.id,
        "path": str(grant.path),
        "mode": str(grant.mode),
        "lifetime": str(grant.lifetime),
        "session": grant.session,
        "profile": grant.profile,
        "created_at": grant.created_at,
        "expires_at": grant.expires_at,
        "revoked_at": grant.revoked_at,
    }


def handle_grants(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        now = time.time()
        live = {r.id for r in core.store.sessions(live_only=True)}
        every: list[AnyGrant] = [
            *core.store.grants(None if args.all else now),
            *core.store.network_grants(None if args.all else now),
        ]
        grants = [g for g in every if args.all or g.session is None or g.session in live]
        if args.json:
            print_json([grant_json(g) for g in grants])
            return 0
        rows = [
            [
                g.id,
                str(g.mode),
                str(g.lifetime),
                g.session or f"profile {g.profile}",
                when(g.expires_at) if g.expires_at else "",
                str(g.path),
            ]
            for g in grants
        ]
        print_table(
            ["grant", "mode", "lifetime", "for", "until", "path or host"], rows, "no grants"
        )
    return 0


def parse_until(text: str) -> float:
    try:
        return time.time() + parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as e:
        raise AirlockError(
            f"--until {text!r}: use a duration (30m, 2h) or a time (2026-12-01T18:00)"
        ) from e


def handle_grant(ctx: Context, args: argparse.Namespace) -> int:
    with open_core(ctx.dirs) as core:
        profile = core.catalog.load(args.profile).name
        request = parse_grant_argument(args.path, Path.cwd())
        if args.until:
            grant = grant_for(
                request,
                lifetime=Lifetime.UNTIL,
                profile=profile,
                expires_at=parse_until(args.until),
            )
        else:
            grant = grant_for(request, lifetime=Lifetime.ALWAYS, profile=profile)
        core.store.add_grants([grant])
    print(
        f"{grant.id}: {profile} may read {grant.path} "
        f"{'until ' + when(grant.expires_at) if grant.expires_at else 'in every session'}"
    )
    return 0


def handle_revoke(ctx: Context, args: argparse.Namespace) -> int:
    if sum(bool(x) for x in (args.grant, args.session, args.all)) != 1:
        raise GrantError("name one grant, or --session SESSION, or --all")
    with open_supervisor(ctx.dirs) as supervisor:
        now = time.time()
        if args.all:
            ids = [g.id for g in supervisor.store.grants(now)]
            ids += [g.id for g in supervisor.store.network_grants(now)]
        elif args.session:
            if supervisor.store.session(args.session) is None:
                raise GrantError(f"no session {args.session!r} (see `airlock sessions`)")
            ids = [g.id for g in supervisor.store.session_grants(args.session, now)]
            ids += [g.id for g in supervisor.store.network_grants(now) if g.session == args.session]
        else:
            ids = list(args.grant)
        stopped: list[str] = []
        supervisor.bus.attach(
            lambda e: (
                stopped.append(e.session or "")
                if (e.kind is EventKind.GRANT_REVOKED and e.details.get("stopped"))
                else None
            )
        )
        revoked = supervisor.revoke(ids)
    for grant in revoked:
        print(f"revoked {grant.id}: {grant.path}")
    for session in dict.fromkeys(stopped):
        print(
            f"stopped session {session}: a read-write folder cannot be taken back from a "
            f"running agent; its staged changes are kept (`airlock changes {session}`)"
        )
    if not revoked:
        print("nothing to revoke")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "grants", handle_grants, "list active grants")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all", action="store_true", help="include revoked and expired grants")
    parser = add_command(
        sub,
        "grant",
        handle_grant,
        "let every session of a profile read a path (until revoked or a time)",
    )
    parser.add_argument("--profile", "-p", required=True)
    parser.add_argument("--until", metavar="WHEN", help="a duration (2h) or a time (ISO 8601)")
    parser.add_argument("path", metavar="PATH[:ro]")
    parser = add_command(
        sub, "revoke", handle_revoke, "revoke grants; running sessions lose the access at once"
    )
    parser.add_argument("grant", nargs="*", help="grant ids (see `airlock grants`)")
    parser.add_argument("--session", help="every grant of this session")
    parser.add_argument("--all", action="store_true", help="every active grant")
