"""Where Airlock keeps its files, following the XDG base directory spec."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from app.errors import AirlockError


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
            # No logind session (a container, a plain su): a private directory in /tmp, like
            # tmux's, because socket paths must stay short (108 bytes).
            runtime = Path(f"/tmp/airlock-{os.getuid()}")
        return cls(
            config=platformdirs.user_config_path("airlock"),
            state=platformdirs.user_state_path("airlock"),
            runtime=runtime,
        )

    @property
    def user_profiles(self) -> Path:
        return self.config / "profiles"

    @property
    def supervisor_socket(self) -> Path:
        """Where a running supervisor takes `airlock run` hand-offs (app/handoff.py)."""
        return self.runtime / "supervisor.sock"

    @property
    def database(self) -> Path:
        return self.state / "state.db"

    @property
    def sessions(self) -> Path:
        return self.state / "sessions"

    @property
    def history(self) -> Path:
        """Ended sessions' output, kept for the history (app/history.py)."""
        return self.state / "history"

    @property
    def audit(self) -> Path:
        return self.state / "audit"

    def ensure(self) -> None:
        for path in (self.config, self.state, self.runtime, self.sessions):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # In a shared /tmp someone else could have made it first: it must be ours alone.
        st = os.lstat(self.runtime)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise AirlockError(
                f"{self.runtime} is not a directory of yours; remove it or set XDG_RUNTIME_DIR"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.runtime, 0o700)
