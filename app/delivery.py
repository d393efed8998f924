"""How files the user picked reach a running session: the contract between the portal and the
core. The Supervisor implements it; the portal only calls it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from app.grants import Lifetime, Mode

# Where files granted mid-run appear when they are not under a path the session already
# shows (like the document portal's /run/user/UID/doc): /run/airlock/doc/TOKEN/NAME.
DOCUMENTS = PurePosixPath("/run/airlock/doc")
# Where files the agent saves through the portal are staged: /run/airlock/save/TOKEN/NAME.
SAVES = PurePosixPath("/run/airlock/save")


class FileDelivery(Protocol):
    """Both calls are coroutines: they link or copy files, which must not block the loop."""

    async def open_files(
        self,
        session: str,
        paths: Sequence[Path],
        mode: Mode,
        lifetime: Lifetime,
        until: float | None = None,
    ) -> list[PurePosixPath]:
        """Grants existing host files (or directories) to a running session and returns the
        path of each inside the container. Read-only files are linked, not copied; read-write
        ones are staged like any write. Raises GrantError naming the path on refusal."""
        ...

    async def save_files(
        self, session: str, targets: Sequence[Path], lifetime: Lifetime
    ) -> list[PurePosixPath]:
        """Prepares one staged file per host target the user chose in a save dialog and
        returns the path inside the container the agent should write to. Nothing reaches the
        target until the user commits it."""
        ...
