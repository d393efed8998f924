"""`airlock image build|show`: the agent image every shipped profile runs in."""

from __future__ import annotations

import argparse
import json
import time

import docker
import docker.errors

from app.agent_image import (
    AGENTS,
    LABEL_AGENT,
    LABEL_BASE,
    LABEL_PACKAGES,
    LABEL_VERSION,
    agent_tag,
    build_agent,
    pinned_labels,
)
from app.engine import connect_engine
from app.errors import ImageError
from app.image import (
    AGENTS_IN_IMAGE,
    DEFAULT_IMAGE,
    RECIPE_LABEL,
    ImageState,
    Recipe,
    build,
    image_info,
)
from ui.commands.base import Context, add_command


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = add_command(sub, "image", _usage, "build or show the agent image")
    actions = group.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    build_parser = add_command(
        actions, "build", _build, "build the agent image offline with mmdebstrap (idempotent)"
    )
    build_parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build_parser.add_argument(
        "--tag", default=None, help=f"default: {DEFAULT_IMAGE}, or airlock-agent:AGENT"
    )
    build_parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="AGENT",
        help=f"also build an agent's image on the base: {', '.join(sorted(AGENTS))} or all "
        "(repeatable)",
    )
    build_parser.add_argument(
        "--version", default=None, help="the agent's package version (default: the pinned one)"
    )
    build_parser.add_argument(
        "--base",
        default=DEFAULT_IMAGE,
        help=f"the base image under an agent (default: {DEFAULT_IMAGE})",
    )
    build_parser.add_argument(
        "--offline", action="store_true", help="use only packages already in the cache"
    )

    show_parser = add_command(actions, "show", _show, "show the agent image and its recipe")
    show_parser.add_argument("--tag", default=DEFAULT_IMAGE, help=f"default: {DEFAULT_IMAGE}")
    show_parser.add_argument(
        "--agent", default=None, metavar="AGENT", help="show an agent's image: what went into it"
    )


def _usage(ctx: Context, args: argparse.Namespace) -> int:
    # argparse requires an action, so this only runs if that ever changes.
    print("usage: airlock image {build,show}")
    return 2


def _build(ctx: Context, args: argparse.Namespace) -> int:
    # Importing a 150 MB tarball takes longer than the engine's usual answer time.
    client = connect_engine(timeout=600)
    if args.agent:
        return _build_agents(client, args)
    recipe = Recipe.default()
    tag = args.tag or DEFAULT_IMAGE
    info = image_info(client, tag, recipe)
    if info.state is ImageState.CURRENT and not args.force:
        print(f"{tag} is up to date (recipe {info.recipe[:12]})")
        return 0
    started = time.monotonic()
    info = build(client, recipe, tag, force=True, say=print)
    print(
        f"built {tag} ({info.size / 1e6:.0f} MB, recipe {info.recipe[:12]}) "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0


def _build_agents(client: docker.DockerClient, args: argparse.Namespace) -> int:
    names: list[str] = []
    for name in args.agent:
        for one in sorted(AGENTS) if name == "all" else [name]:
            if one not in AGENTS:
                raise ImageError(
                    f"no agent named {one!r} (known: {', '.join(sorted(AGENTS))}, all)"
                )
            if one not in names:
                names.append(one)
    if len(names) > 1 and (args.tag or args.version):
        raise ImageError("--tag and --version apply to one agent at a time")
    for name in names:
        build_agent(
            client,
            name,
            version=args.version,
            base=args.base,
            tag=args.tag,
            force=args.force,
            offline=args.offline,
            say=print,
        )
    return 0


def _show(ctx: Context, args: argparse.Namespace) -> int:
    if args.agent:
        return _show_agent(args.agent)
    recipe = Recipe.default()
    info = image_info(connect_engine(), args.tag, recipe)
    print(f"image:    {info.tag}")
    print(f"state:    {info.state.value}")
    if info.state is ImageState.MISSING:
        print("          build it with: airlock image build")
        return 1
    print(f"id:       {info.id}")
    print(f"created:  {info.created}")
    print(f"size:     {info.size / 1e6:.0f} MB")
    print(f"user:     {info.user or 'root (!)'}")
    print(f"recipe:   {info.recipe or '(none)'}")
    if info.state is ImageState.OUTDATED:
        print(f"          the current recipe is {recipe.digest()}: run airlock image build")
    print(f"suite:    Debian {recipe.suite}")
    print(f"packages: {' '.join(recipe.packages)}")
    print(f"agents:   {', '.join(f'{AGENTS_IN_IMAGE}/{a.name}' for a in recipe.agents)}")
    return 0


def _show_agent(agent: str) -> int:
    if agent not in AGENTS:
        raise ImageError(f"no agent named {agent!r} (known: {', '.join(sorted(AGENTS))})")
    tag = agent_tag(agent)
    try:
        image = connect_engine().images.get(tag)
    except docker.errors.ImageNotFound:
        print(
            f"image:    {tag}\nstate:    missing\n"
            f"          build it with: airlock image build --agent {agent}"
        )
        return 1
    labels = image.labels or {}
    pinned = pinned_labels(agent)
    current = labels.get(RECIPE_LABEL) == pinned[RECIPE_LABEL]
    print(f"image:    {tag}")
    print(f"state:    {'up to date' if current else 'not the pinned recipe'}")
    print(f"id:       {image.id}")
    print(f"size:     {int(image.attrs.get('Size', 0)) / 1e6:.0f} MB")
    print(
        f"agent:    {labels.get(LABEL_AGENT, '?')} {labels.get(LABEL_VERSION, '?')} "
        f"(pinned: {AGENTS[agent].default_version})"
    )
    try:
        packages = json.loads(labels.get(LABEL_PACKAGES, "{}"))
    except ValueError:
        packages = {}
    for name, integrity in sorted(packages.items()):
        print(f"package:  {name} {integrity}")
    print(f"base:     {labels.get(LABEL_BASE, '?')}")
    print(f"recipe:   {labels.get(RECIPE_LABEL, '(none)')}")
    return 0
