"""The reaper: a process of its own per session that outlives its supervisor, run as
`python -m app.reaper LABEL=VALUE...` (outside app.sessions, whose import would cost each
session start a third of a second of CPU).

It waits on a pipe from the supervisor. "done" (the session ended as usual) ends it quietly;
the end of the pipe without it means the supervisor is gone (killed, crashed: the kernel
closes its end), and the containers with all those labels go too: the session's agent must
not run on unwatched, past its timeout. Docker is imported only then: most reapers never
need it, and one starts with every session.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def reap(labels: Sequence[str]) -> int:
    """Removes every container carrying all `labels`; 1 if one could not be removed."""
    import docker.errors

    from app.container import agents_first
    from app.engine import connect_engine

    engine = connect_engine()
    status = 0
    found_all = engine.api.containers(all=True, filters={"label": list(labels)})
    for found in agents_first(found_all or [], lambda c: c.get("Labels") or {}):
        try:
            engine.api.remove_container(found["Id"], force=True)
        except docker.errors.APIError as e:
            print(f"airlock: cannot remove container {found['Id'][:12]}: {e}", file=sys.stderr)
            status = 1
    return status


def main(argv: Sequence[str]) -> int:
    if sys.stdin.buffer.read() == b"done":
        return 0
    return reap(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
