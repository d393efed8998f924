"""Where Airlock keeps its files, following the XDG base directory spec."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


@dataclass(frozen=True, slots=True)
class Dirs:
    """Airlock's directories for one user. Built once by the command line or the app and
    passed down; nothing reads the environment behind the caller's back."""

    config: Path  # the user's own profiles: config/profiles/*.toml
    state: Path  # state.db, the audit log, per-session views and staging
    runtime: Path  # sockets and other things that must not outlive the login

    @classmethod
    def for_user(cls) -> Dirs:
        xdg_runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if xdg_runtime and os.path.isdir(xdg_runtime):
            runtime = Path(xdg_runtime) / "airlock"
        else:
            # No logind session (e.g. a container or a plain su): keep sockets beside the state.
            runtime = platformdirs.user_state_path("airlock") / "run"
        return cls(
            config=platformdirs.user_config_path("airlock"),
            state=platformdirs.user_state_path("airlock"),
            runtime=runtime,
        )

    @property
    def user_profiles(self) -> Path:
        return self.config / "profiles"

    @property
    def database(self) -> Path:
        return self.state / "state.db"

    @property
    def sessions(self) -> Path:
        return self.state / "sessions"

    @property
    def audit(self) -> Path:
        return self.state / "audit"

    def ensure(self) -> None:
        for path in (self.config, self.state, self.runtime, self.sessions):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
