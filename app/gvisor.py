"""gVisor (`runtime = "runsc"`) as pure decisions: how runsc must be registered with the
engine, what of the sandbox can be checked from the host under it, and what differs.

How a session runs under gVisor, and why (each measured with Debian's runsc 0.0~20221219):

- **Network: `--network=host`.** gVisor's own netstack (the default, `sandbox`) keeps a
  loopback of its own, so the agent's 127.0.0.1:3128 is not the port the sidecar bound and
  handed to the proxy (app/egress/listener.py): no network at all, and the witness sees
  nothing. With `host`, gVisor's Sentry makes the agent's socket calls on the host kernel,
  in the network namespace Docker put the container in — the sidecar's, which has loopback
  and the witness's TUN device only. So the proxy, the witness and the routes are exactly
  those of a runc session. The cost: the host kernel's network stack is reachable from the
  Sentry (behind gVisor's own seccomp filter) instead of gVisor's netstack; a namespace with
  no uplink keeps that small. The alternative — a relay process in the agent's container
  from a gVisor loopback port to a unix socket — puts a process the agent can kill or
  replace on the path and costs a copy of every byte.
- **Portal and gate: `--host-uds=open`, `--host-fifo=open`.** The session's bus socket and
  the self-check's gate FIFO are host files bind-mounted in; gVisor refuses to open either
  without these (they allow opening sockets and FIFOs that are mounted in, not creating
  them). Under gVisor the bus sees gVisor's gofer (root) as the peer, not the agent's uid,
  so D-Bus's EXTERNAL check fails: a relay answers it for the agent (`portal/relay.py`).
- **Seccomp: `--oci-seccomp`.** Without it runsc ignores the profile's filter (the agent
  saw `Seccomp: 0`, unshare and ptrace worked). With it, gVisor's Sentry applies the
  profile's own filter to the agent's system calls — gVisor's implementation of seccomp,
  not the host kernel's, which filters the Sentry itself with gVisor's filter.
- **Pids.** On the default ptrace platform each agent process is backed by host threads
  of gVisor's, and gVisor itself runs ~45 threads idle, all in the container's pids cgroup
  (a `pids = 64` profile exited 2 with no output). The host limit is therefore
  `GVISOR_PIDS_BASE + GVISOR_PIDS_PER_PROCESS × pids` (measured: 44 threads idle, ~8 per
  process). Reaching it ends the whole sandbox rather than failing one fork.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

RUNSC = "runsc"
RUNSC_PATH = "/usr/bin/runsc"
# What runsc must be run with (see the module's docstring for each).
RUNTIME_ARGS = ("--network=host", "--host-uds=open", "--host-fifo=open", "--oci-seccomp")
GVISOR_PIDS_BASE = 128  # gVisor's own threads: 44 idle on two CPUs, more with more CPUs
GVISOR_PIDS_PER_PROCESS = 8  # host threads per agent process on the ptrace platform
SANDBOX_EXECUTABLE = "runsc"
SANDBOX_ARGV0 = "runsc-sandbox"
# The line every gVisor session's sandbox status carries: what is checked differently.
NOTE = (
    "gVisor: the agent's processes are inside gVisor's kernel, so uid, capabilities and "
    "mounts are the engine's word, not read from /proc; seccomp is the profile's filter "
    "applied by gVisor, not the host kernel; the pids limit counts gVisor's threads; the "
    "portal answers clients that send no kernel credentials (airlock-request, the MCP "
    "server), not GLib's (gdbus, GTK file dialogs)"
)


def is_gvisor(runtime: str | None) -> bool:
    return runtime == RUNSC


def host_pids(pids: int) -> int:
    """The engine's pids limit that lets `pids` agent processes run under gVisor."""
    return GVISOR_PIDS_BASE + GVISOR_PIDS_PER_PROCESS * pids


def registration(path: str = RUNSC_PATH) -> dict[str, Any]:
    """The `runtimes` entry of /etc/docker/daemon.json that Airlock needs."""
    return {RUNSC: {"path": path, "runtimeArgs": list(RUNTIME_ARGS)}}


def registration_fix(path: str = RUNSC_PATH) -> str:
    """How to register runsc: the snippet, and how to make dockerd read it."""
    snippet = json.dumps({"runtimes": registration(path)}, separators=(", ", ": "))
    return (
        f"install runsc (Debian: apt install runsc) and add to /etc/docker/daemon.json "
        f"{snippet} (merged with what is there), then `sudo kill -HUP $(pidof dockerd)` "
        "(or restart docker): runtimes are reloaded without a restart"
    )


def registration_problem(runtimes: Mapping[str, Any]) -> str | None:
    """Why the engine's runsc (`docker info`'s Runtimes) cannot run Airlock's sessions, or
    None. An engine that does not report runtime arguments (Podman) is refused: its runsc's
    flags cannot be known."""
    entry = runtimes.get(RUNSC)
    if entry is None:
        return "runsc is not registered with the engine"
    if not isinstance(entry, Mapping):
        return "the engine does not say how it runs runsc"
    args = entry.get("runtimeArgs") or entry.get("RuntimeArgs") or []
    given = {str(a).removesuffix("=true") for a in args}
    missing = [a for a in RUNTIME_ARGS if a not in given]
    if missing:
        return f"runsc is registered without {' '.join(missing)}"
    return None
