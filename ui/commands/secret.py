"""`airlock secret`: store, list and delete route credentials in the keyring.

A value is read from stdin (when it is not a terminal) or from a prompt that does not echo;
never from the command line, where `ps` and the shell history would keep it.

On a text or SSH login the keyring is made usable first (app/egress/secret_service.py): the
login's own bus is found, gnome-keyring is started on it and the login keyring unlocked with
a password typed on the terminal; where that cannot be done, the command says what to do and
fails. It never falls back to a file.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from app.egress.keys import KeyringSecrets, check_name, check_value
from app.egress.secret_service import (
    Collection,
    keyring_problem,
    probe_keyring,
    secret_service_backend,
    start_gnome_keyring,
    use_login_bus,
)
from app.errors import EgressError
from ui.commands.base import Context, add_command


def keyring_for(ctx: Context, command: str) -> KeyringSecrets:
    """The keyring, usable on this login, or EgressError saying what to do."""
    use_login_bus(os.environ, os.getuid())
    facts = probe_keyring(os.environ, os.getuid())
    index = ctx.dirs.config / "secrets"
    if facts.ready:
        return KeyringSecrets(index)
    advice = keyring_problem(facts, command)
    if not facts.startable:
        raise EgressError(f"{advice.problem}: {advice.fix}")
    what = "create" if facts.collection is Collection.MISSING else "unlock"
    print(f"airlock: {advice.problem}; starting gnome-keyring on this login's bus", file=sys.stderr)
    try:
        # getpass reads the terminal itself (the secret may be piped into stdin), but falls
        # back to stdin without one: make sure there is one.
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        password = getpass.getpass(f"password to {what} your login keyring: ")
    except (OSError, EOFError) as e:
        raise EgressError(
            f"{advice.problem}, and there is no terminal to ask for the "
            f"keyring's password on: {advice.fix}"
        ) from e
    if not password:
        raise EgressError(
            "no password given: the login keyring stays "
            f"{'uncreated' if what == 'create' else 'locked'}"
        )
    # A daemon that owns the bus name already (started by D-Bus activation, with nobody to
    # ask) holds the keyring locked: only its replacement takes the password.
    start_gnome_keyring(
        password, os.environ, replace=facts.collection in (Collection.LOCKED, Collection.MISSING)
    )
    after = probe_keyring(os.environ, os.getuid(), secret_service_backend())
    if after.collection is not Collection.UNLOCKED:
        raise EgressError(
            "gnome-keyring started, but the login keyring is still "
            f"{after.collection.value}: was the password right? (an existing "
            "keyring keeps the password it was created with)"
        )
    return KeyringSecrets(index, secret_service_backend())


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "secret", handle, "Store route credentials in your keyring.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    setter = actions.add_parser("set", help="store a secret (read from stdin or a prompt)")
    setter.add_argument("name")
    actions.add_parser("list", help="the names of the secrets Airlock stored")
    deleter = actions.add_parser("delete", help="remove a secret from the keyring")
    deleter.add_argument("name")


def handle(ctx: Context, args: argparse.Namespace) -> int:
    if args.action == "set":
        check_name(args.name)
        if sys.stdin.isatty():
            value = getpass.getpass(f"secret for {args.name}: ")
        else:
            value = sys.stdin.read()
            value = value[:-1] if value.endswith("\n") else value
            value = value[:-1] if value.endswith("\r") else value
        check_value(value)
        keyring_for(ctx, f"airlock secret set {args.name}").set(args.name, value)
        print(f"stored secret {args.name} in the keyring")
    elif args.action == "list":
        # Names only, from Airlock's own index: no keyring needed.
        for name in KeyringSecrets(ctx.dirs.config / "secrets").names():
            print(name)
    elif args.action == "delete":
        keyring_for(ctx, f"airlock secret delete {args.name}").delete(args.name)
        print(f"deleted secret {args.name}")
    else:
        raise EgressError(f"unknown action {args.action}")
    return 0
