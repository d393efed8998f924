"""What every subcommand gets: the user's directories, and how it registers itself."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from app.paths import Dirs


@dataclass(frozen=True, slots=True)
class Context:
    dirs: Dirs


Handler = Callable[[Context, argparse.Namespace], int]


def add_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: Handler,
    help: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser
