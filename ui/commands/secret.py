"""`airlock secret`: store, list and delete route credentials in the keyring.

A value is read from stdin (when it is not a terminal) or from a prompt that does not echo;
never from the command line, where `ps` and the shell history would keep it.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from app.egress.keys import KeyringSecrets
from app.errors import EgressError
from ui.commands.base import Context, add_command


def keyring_for(ctx: Context) -> KeyringSecrets:
    return KeyringSecrets(ctx.dirs.config / "secrets")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "secret", handle, "Store route credentials in your keyring.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    setter = actions.add_parser("set", help="store a secret (read from stdin or a prompt)")
    setter.add_argument("name")
    actions.add_parser("list", help="the names of the secrets Airlock stored")
    deleter = actions.add_parser("delete", help="remove a secret from the keyring")
    deleter.add_argument("name")


def handle(ctx: Context, args: argparse.Namespace) -> int:
    secrets = keyring_for(ctx)
    if args.action == "set":
        if sys.stdin.isatty():
            value = getpass.getpass(f"secret for {args.name}: ")
        else:
            value = sys.stdin.read()
            value = value[:-1] if value.endswith("\n") else value
            value = value[:-1] if value.endswith("\r") else value
        secrets.set(args.name, value)
        print(f"stored secret {args.name} in the keyring")
    elif args.action == "list":
        for name in secrets.names():
            print(name)
    elif args.action == "delete":
        secrets.delete(args.name)
        print(f"deleted secret {args.name}")
    else:
        raise EgressError(f"unknown action {args.action}")
    return 0
