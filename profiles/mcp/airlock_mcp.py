#!/usr/bin/python3 -I
"""Airlock's MCP server, inside the agent's container: the asks of airlock_ask.py as tools
an agent calls over stdio (MCP), with their descriptions written for a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

# /opt/airlock/mcp: the shared code, and the packages it needs beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import airlock_ask
from mcp.server.mcpserver import MCPServer

server = MCPServer("airlock", instructions=airlock_ask.INSTRUCTIONS)


@server.tool()
async def request_files(
    reason: str,
    access: Literal["read", "read-write"] = "read",
    folder: bool = False,
    multiple: bool = False,
) -> str:
    """Ask the user to let you open files, or a folder, that you were not given. `reason`
    is shown to the user: say what you need and why. The user picks what to grant and
    whether you may change it (changes are staged for their review). Returns the paths
    granted and their access, or that the user said no."""
    return await airlock_ask.request_files(reason, access, folder, multiple)


@server.tool()
async def save_file(reason: str, name: str, content: str) -> str:
    """Hand the user a new file: they choose where it goes. `name` is the suggested file
    name, `reason` is shown to the user. The file is staged for their review."""
    return await airlock_ask.save_file(reason, name, content)


@server.tool()
async def request_host(host: str, port: int, reason: str) -> str:
    """Ask the user to let you reach a network host that your profile does not list, for
    the rest of this session (e.g. docs.python.org, 443). `reason` is shown to the user:
    say what you need from it and why."""
    return await airlock_ask.request_host(host, port, reason)


@server.tool()
async def status() -> str:
    """What you have in this Airlock session: the folders and files granted (and whether
    you may change them), files waiting in the save area, your requests still waiting for
    the user, and the model routes and proxy your network goes through."""
    return await airlock_ask.status()


if __name__ == "__main__":
    server.run()
