"""The egress bridge: plugs a session's proxy and its relay sidecar into the session.

The agent's container has no network of its own. It joins the network namespace of a sidecar
started with `network_mode="none"` (loopback only), in which socat listens on
127.0.0.1:3128 and relays each connection to the proxy's unix socket, bind-mounted from the
host. There is no route, no DNS server, no other listener: the proxy is the only way out,
and it resolves names itself.

Why a sidecar rather than mounting the socket into the agent's container and running socat
there? The agent could then kill or replace the relay, and its image would need socat; the
sidecar is the agent image too (it has socat), but a container of its own that the agent
cannot touch, read-only, without capabilities, running as the agent's uid.

Only the `net/` subdirectory of the session's runtime directory is mounted into the sidecar,
so other sockets there (the portal's bus) stay out of its reach.

Environment for the agent: HTTP(S)_PROXY in both spellings, and NO_PROXY for loopback names
only — loopback in the agent's namespace is the container's own (and the relay's port),
nothing of the host, so it opens no way around the proxy; it makes route URLs
(`http://127.0.0.1:3128/routes/NAME`) go straight to the proxy in origin form and lets an
agent talk to servers it runs itself. One `AIRLOCK_ROUTE_<NAME>` variable per route holds its
base URL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from app.consent import ConsentBroker
from app.container import LABEL_ROLE, ContainerAdditions
from app.egress.inspect import GrantedContent
from app.egress.keys import SecretSource
from app.egress.proxy import PROXY_PORT, ProxySettings, Resolver, SessionProxy
from app.errors import EgressError
from app.profiles import Profile
from app.sessions import SessionContext

log = logging.getLogger(__name__)

SOCKET_DIR = "/run/airlock/net"
READY_TIMEOUT = 15.0
GRANTED_REFRESH_SECONDS = 10.0
MAX_UNIX_PATH = 107


def proxy_environment(profile: Profile) -> dict[str, str]:
    url = f"http://127.0.0.1:{PROXY_PORT}"
    environment = {name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                          "https_proxy")}
    environment["NO_PROXY"] = environment["no_proxy"] = "localhost,127.0.0.1,::1"
    for route in profile.network.routes:
        variable = "AIRLOCK_ROUTE_" + re.sub(r"[^A-Z0-9]", "_", route.name.upper())
        environment[variable] = f"{url}/routes/{route.name}"
    return environment


def relay_command() -> list[str]:
    # -b: socat's 8 KiB default buffer would cap throughput; fork: one child per connection;
    # nodelay: without it, Nagle and delayed ACKs add ~40 ms to each small request.
    return ["socat", "-b", "262144",
            f"TCP-LISTEN:{PROXY_PORT},bind=127.0.0.1,fork,reuseaddr,backlog=256,nodelay",
            f"UNIX-CONNECT:{SOCKET_DIR}/proxy.sock"]


class ViewContent:
    """The granted files' fingerprints, taken from the session's view and rebuilt at most
    every `GRANTED_REFRESH_SECONDS` (grants come and go while the session runs)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._content: GrantedContent | None = None
        self._taken = 0.0
        self._lock = asyncio.Lock()

    async def current(self) -> GrantedContent:
        async with self._lock:
            if self._content is None or time.monotonic() - self._taken > GRANTED_REFRESH_SECONDS:
                self._content = await asyncio.to_thread(GrantedContent.of_tree, self._root,
                                                        Path("/"))
                self._taken = time.monotonic()
            return self._content


class Egress:
    """The session extension factory: `Supervisor(..., extensions=[Egress(engine, ...)])`.
    Holds what every session's proxy shares; each call makes one session's bridge."""

    def __init__(
        self,
        engine: docker.DockerClient,
        *,
        secrets: SecretSource,
        broker: ConsentBroker | None,
        resolver: Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        settings: ProxySettings | None = None,
    ) -> None:
        self.engine = engine
        self.secrets = secrets
        self.broker = broker
        self.resolver = resolver
        self.tls = tls
        self.settings = settings

    def __call__(self) -> EgressBridge:
        return EgressBridge(self)


class EgressBridge:
    """One session's proxy and relay sidecar."""

    def __init__(self, egress: Egress) -> None:
        self._egress = egress
        self.proxy: SessionProxy | None = None
        self.sidecar: Container | None = None

    async def prepare(self, session: SessionContext) -> ContainerAdditions:
        network = session.profile.network
        if not (network.allow or network.ask or network.routes):
            # Nothing is allowed out: no proxy, no sidecar, the agent keeps --network none.
            return ContainerAdditions()
        directory = session.runtime_dir / "net"
        directory.mkdir(mode=0o755, exist_ok=True)
        directory.chmod(0o755)
        socket_path = directory / "proxy.sock"
        if len(str(socket_path)) > MAX_UNIX_PATH:
            raise EgressError(f"the proxy socket path is too long for a unix socket: "
                              f"{socket_path}")
        egress = self._egress
        self.proxy = SessionProxy(
            session.id, session.profile, session.bus, secrets=egress.secrets,
            broker=egress.broker, resolver=egress.resolver,
            granted=ViewContent(session.view.root), tls=egress.tls, settings=egress.settings,
        )
        await self.proxy.start(socket_path)
        self.sidecar = await asyncio.to_thread(self._create_sidecar, session, directory)
        await self._wait_listening(self.sidecar)
        return ContainerAdditions(network_mode=f"container:{self.sidecar.id}",
                                  environment=proxy_environment(session.profile))

    async def started(self, session: SessionContext, container_id: str) -> None:
        return None

    async def close(self) -> None:
        sidecar, self.sidecar = self.sidecar, None
        if sidecar is not None:
            await asyncio.to_thread(_remove, sidecar)
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            await proxy.close()

    def _create_sidecar(self, session: SessionContext, directory: Path) -> Container:
        from docker.types import Mount

        api = self._egress.engine.api
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true",
                          *([f"seccomp={session.seccomp}"] if session.seccomp else [])],
            pids_limit=512,  # socat forks one child per connection
            mem_limit=128 * 1024 * 1024,
            memswap_limit=128 * 1024 * 1024,
            ipc_mode="private",
            init=True,
            mounts=[Mount(target=SOCKET_DIR, source=str(directory), type="bind",
                          read_only=True, propagation="rprivate")],
        )
        kwargs: dict[str, Any] = {
            "image": session.profile.image,
            "command": relay_command(),
            "name": f"airlock-{session.id}-bridge",
            "user": f"{session.identity.uid}:{session.identity.gid}",
            "environment": {"PATH": "/usr/bin:/bin"},
            "labels": dict(session.labels, **{LABEL_ROLE: "bridge"}),
            "hostname": "airlock",
            "detach": True,
            "host_config": host_config,
        }
        try:
            created = api.create_container(**kwargs)
            container = self._egress.engine.containers.prepare_model({"Id": created["Id"]})
            container.start()
            container.reload()
            return container
        except docker.errors.APIError as e:
            raise EgressError(f"cannot start the network bridge: {e.explanation}") from e

    async def _wait_listening(self, sidecar: Container) -> None:
        """Until socat listens: read the sidecar's TCP table from the host's /proc (no exec,
        no connection to the proxy) — the relay must be up before the agent's first request."""
        pid = int(sidecar.attrs["State"]["Pid"] or 0)
        table = Path(f"/proc/{pid}/net/tcp")
        wanted = f"0100007F:{PROXY_PORT:04X}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                text = await asyncio.to_thread(table.read_text)
            except OSError:
                text = ""
            if any(line.split()[1:2] == [wanted] and line.split()[3:4] == ["0A"]
                   for line in text.splitlines()[1:]):
                return
            await asyncio.to_thread(sidecar.reload)
            if sidecar.status not in ("created", "running"):
                logs = await asyncio.to_thread(sidecar.logs, tail=5)
                raise EgressError("the network bridge exited: "
                                  + logs.decode("utf-8", "replace").strip())
            await asyncio.sleep(0.02)
        raise EgressError(f"the network bridge did not listen within {READY_TIMEOUT:.0f} s")


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        log.warning("cannot remove bridge %s: %s", container.short_id, e.explanation)
