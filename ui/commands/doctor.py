"""`airlock doctor`: one line per thing Airlock needs of this machine, ok or not, with the fix.

Exit status 1 when any check finds a problem (warnings do not count); `--json` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from app.doctor import (
    NOTIFICATIONS,
    TRAY_HOST,
    DesktopFacts,
    Finding,
    Status,
    as_json,
    check_desktop,
    check_disk,
    check_engine,
    check_engine_limits,
    check_engine_mode,
    check_gvisor,
    check_image,
    check_inotify,
    check_keyring,
    check_profiles,
    check_runtimes,
    check_seccomp,
    check_session_bus,
    check_userns,
    exit_status,
    has_display,
    probe_disk,
    probe_engine,
    probe_image,
    probe_inotify,
    probe_userns,
    profile_images,
)
from app.egress.secret_service import BusFacts, probe_keyring, use_login_bus
from app.errors import AirlockError
from app.image import DEFAULT_IMAGE
from app.profiles import Profile, ProfileCatalog
from ui.commands.base import Context, add_command

BUS_SECONDS = 3.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(
        sub,
        "doctor",
        handle,
        "check what Airlock needs of this machine: each line ok, warn or "
        "problem, with what to do (exit status 1 on a problem)",
    )
    parser.add_argument("--json", action="store_true", help="the findings as JSON")
    parser.add_argument(
        "-p",
        "--profile",
        action="append",
        default=[],
        metavar="PROFILE",
        help="a profile you mean to run: its image missing is a problem, not a "
        "warning (repeatable)",
    )


def handle(ctx: Context, args: argparse.Namespace) -> int:
    findings = gather(ctx, args.profile)
    if args.json:
        print(as_json(findings))
    else:
        for finding in findings:
            print(f"{finding.status.value:<8} {finding.name}: {finding.detail}")
            if finding.fix and finding.status is not Status.OK:
                print(f"{'':<8} fix: {finding.fix}")
        problems = sum(f.status is Status.PROBLEM for f in findings)
        warnings = sum(f.status is Status.WARN for f in findings)
        print(
            f"{problems} problem{'s' * (problems != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        )
    return exit_status(findings)


def gather(ctx: Context, named: list[str]) -> list[Finding]:
    uid = os.getuid()
    # As `airlock secret` and the supervisor will: the login's own bus when the variable
    # is unset.
    use_login_bus(os.environ, uid)
    catalog = ProfileCatalog(ctx.dirs.user_profiles)
    images, invalid = profile_images(catalog)
    findings: list[Finding] = []
    wanted: list[Profile] = []
    for reference in named:
        try:
            wanted.append(catalog.load(reference))
        except AirlockError as e:
            findings.append(
                Finding(
                    f"profile {reference}",
                    Status.PROBLEM,
                    str(e),
                    "`airlock profiles` lists the profiles there are",
                )
            )
    for profile in wanted:
        if profile not in images.setdefault(profile.image, []):
            images[profile.image].append(profile)

    engine, client = probe_engine(os.environ)
    findings.append(check_engine(engine))
    if client is None:
        findings += [
            Finding(name, Status.WARN, "not checked without an engine")
            for name in ("rootless", "seccomp", "runtime", "images")
        ]
    else:
        try:
            findings += [
                check_engine_mode(engine),
                check_engine_limits(engine),
                check_seccomp(engine),
            ]
            runtimes = {p.name: p.runtime for ps in images.values() for p in ps if p.runtime}
            findings.append(check_runtimes(engine, runtimes))
            findings.append(check_gvisor(engine, runtimes))
            needed = {DEFAULT_IMAGE} | {p.image for p in wanted}
            for image in sorted(set(images) | {DEFAULT_IMAGE}):
                facts = probe_image(client, image, images.get(image, []), image in needed)
                findings.append(check_image(facts))
        finally:
            client.close()
    findings.append(check_userns(probe_userns(uid), engine.rootless))

    keyring = probe_keyring(os.environ, uid)
    bus, secrets = check_session_bus(keyring), check_keyring(keyring)
    if bus.status is Status.PROBLEM and secrets.fix == bus.fix:
        secrets = Finding(secrets.name, secrets.status, secrets.detail, "the session bus's, above")
    findings += [bus, secrets]
    findings += check_desktop(_desktop(keyring.bus))
    findings.append(check_disk(probe_disk(ctx.dirs.sessions)))
    findings.append(check_inotify(probe_inotify()))
    profiles = check_profiles(invalid)
    if profiles is not None:
        findings.append(profiles)
    return findings


def _desktop(bus: BusFacts) -> DesktopFacts:
    display = has_display(os.environ)
    if not display or not bus.reachable:
        return DesktopFacts(display, None, None, bus.error)
    from dbus_fast.errors import DBusError

    from portal.names import owned_names

    try:
        owned = asyncio.run(owned_names(bus.address, [NOTIFICATIONS, TRAY_HOST], BUS_SECONDS))
    except (OSError, DBusError, ValueError, EOFError, TimeoutError) as e:
        return DesktopFacts(display, None, None, f"the session bus: {e}")
    return DesktopFacts(display, owned[NOTIFICATIONS], owned[TRAY_HOST])
