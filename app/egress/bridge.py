"""The egress bridge: plugs a session's proxy and its network witness into the session,
through one sidecar container.

The agent's container has no network of its own. It joins the network namespace of a sidecar
started with `network_mode="none"` (loopback only). In it, the sidecar binds 127.0.0.1:3128
and hands the listening socket to the supervisor (app/egress/listener.py), whose proxy then
accepts the agent's connections itself: the bytes go from the agent's socket straight to the
proxy, with no relay process between them. There is no uplink, no DNS server, no other
listener: the proxy is the only way out, and it resolves names itself.

Why a sidecar rather than binding the port from the agent's container? Binding it needs a
process in the namespace before the agent runs, and the sidecar is also where the witness
must live: the agent image, but a container of its own that the agent cannot touch (another
pid and mount namespace, read-only, the profile's seccomp filter).

Every attempt to leave any other way is an event (invariant 3). The sidecar's command is the
witness, `airlock_netlog.py` from the image: it creates a TUN device in the shared namespace
and makes it the route for every non-loopback IPv4 and IPv6 destination (IPv6 is switched on
in the namespace for that, or an IPv6 attempt would fail unseen), then reads what the agent
sends there — a TCP SYN, a UDP datagram, a DNS query, an ICMP echo — and reports it on
`netlog.sock`, which `BlockedLog` turns into `net.blocked` events. It never
forwards a packet; it answers a SYN with RST and a datagram with ICMP port unreachable so
the agent fails at once. Profiles without network rules get the sidecar too, with the
witness alone (no port, no proxy, no proxy environment): their attempts are events as well.

The witness needs CAP_NET_ADMIN to create the device and set routes, and a capability does
not survive exec for a non-root uid (Docker sets no ambient capabilities, and
no-new-privileges blocks file capabilities). So the sidecar starts as uid 0 with every
capability dropped except NET_ADMIN, SETUID and SETGID, the single device /dev/net/tun,
no-new-privileges, the profile's seccomp filter, a read-only root and the `net/` directory
mounted read-only. Why that is safe:

- The privileged part runs only our script's set-up, before the agent's container exists
  (`prepare` waits for the witness's `ready`): no input of the agent's is read while any
  capability is held. Then the witness calls setgroups/setresgid/setresuid to the session's
  uid, which clears all capabilities (it checks /proc/self/status and exits if any is
  left); it binds the proxy's port only after that. There is no init process:
  the witness is PID 1, so no process holding a capability outlives the set-up.
- CAP_NET_ADMIN is scoped to the namespace it is used in, and this namespace has only `lo`
  and the TUN device: no uplink to route, bridge or tunnel onto. Moving an interface to
  another namespace needs a handle on it, and the sidecar sees no other process (own pid
  namespace) and may not setns/unshare (seccomp). The device's only other end is the
  witness, which writes back only RST and ICMP errors addressed to the agent.
- The agent gains nothing: it has no capabilities (NET_ADMIN over the shared namespace is
  a property of a process, not of the namespace), no /dev/net/tun node and no way to make
  one (no CAP_MKNOD, the device cgroup), and cannot see or signal the sidecar's processes.
  Its packets do reach the witness's parser: that parser runs unprivileged, bounds
  everything, and the supervisor validates and rate-limits its reports as untrusted input.

Only the `net/` subdirectory of the session's runtime directory is mounted into the sidecar,
so other sockets there (the portal's bus) stay out of its reach.

Environment for the agent: HTTP(S)_PROXY in both spellings, and NO_PROXY for loopback names
only — loopback in the agent's namespace is the container's own (and the proxy's port),
nothing of the host, so it opens no way around the proxy; it makes route URLs
(`http://127.0.0.1:3128/routes/NAME`) go straight to the proxy in origin form and lets an
agent talk to servers it runs itself. One `AIRLOCK_ROUTE_<NAME>` variable per route holds its
base URL; an intercepted route's `placeholder_env` holds its placeholder key. A profile that
may inspect HTTPS gets the session's CA in the container's trust store (app/egress/trust.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from app.consent import ConsentBroker
from app.container import LABEL_PROFILE, LABEL_ROLE, LABEL_SESSION, ContainerAdditions
from app.egress.ca import SessionCA
from app.egress.grants import NetworkGrants
from app.egress.inspect import GrantedContent
from app.egress.interception import placeholder
from app.egress.keys import SecretSource
from app.egress.listener import ListenerHandover
from app.egress.proxy import PROXY_PORT, ProxySettings, Resolver, SessionProxy
from app.egress.trust import image_bundle, inspects, known_hosts, trust_additions
from app.egress.witness import BlockedLog
from app.engine import detect_engine, for_engine, one_line
from app.engine_kind import EngineKind
from app.errors import EgressError
from app.events import EventBus, EventKind
from app.grants import (
    Access,
    Lifetime,
    NetworkGrant,
    network_grant_for,
    new_network_grant_id,
)
from app.paths import Dirs
from app.profiles import Profile
from app.sessions import SessionContext

log = logging.getLogger(__name__)

SOCKET_DIR = "/run/airlock/net"
WITNESS = "/opt/airlock/agents/airlock_netlog.py"
WITNESS_DEVICE = "airlock0"  # the witness's TUN device, the namespace's only route out
WITNESS_CAPABILITIES = ("NET_ADMIN", "SETUID", "SETGID")  # dropped by the witness at once
READY_TIMEOUT = 15.0
WITNESS_STOP_SECONDS = 2.0
GRANTED_REFRESH_SECONDS = 10.0
MAX_UNIX_PATH = 107


def proxy_environment(profile: Profile) -> dict[str, str]:
    url = f"http://127.0.0.1:{PROXY_PORT}"
    environment = {name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    environment["NO_PROXY"] = environment["no_proxy"] = "localhost,127.0.0.1,::1"
    for route in profile.network.routes:
        variable = "AIRLOCK_ROUTE_" + re.sub(r"[^A-Z0-9]", "_", route.name.upper())
        environment[variable] = f"{url}/routes/{route.name}"
        if route.placeholder_env:
            # The agent's key for an intercepted route: swapped for the real one in the proxy.
            environment[route.placeholder_env] = placeholder(route)
    return environment


def sidecar_command(uid: int, gid: int, proxied: bool) -> list[str]:
    """The witness, which drops to `uid`:`gid` and then (`proxied`) binds the proxy's port
    and hands it over. -S: it needs nothing of site-packages, and starts sooner without."""
    command = [
        "python3",
        "-I",
        "-S",
        WITNESS,
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--report",
        f"{SOCKET_DIR}/netlog.sock",
    ]
    if proxied:
        command += [
            "--listen",
            f"127.0.0.1:{PROXY_PORT}",
            "--hand-over",
            f"{SOCKET_DIR}/listener.sock",
        ]
    return command


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
                self._content = await asyncio.to_thread(
                    GrantedContent.of_tree, self._root, Path("/")
                )
                self._taken = time.monotonic()
            return self._content


@dataclass(slots=True)
class _Spare:
    """A sidecar started ahead of time, witness ready and the proxy's port handed over, for
    no session yet. Everything that makes it a session's (its events, its proxy) comes
    later."""

    key: tuple[str, int, int, str]  # image, uid, gid, seccomp: what it was made with
    directory: Path
    blocked: BlockedLog
    handover: ListenerHandover
    sidecar: Container


class Egress:
    """The session extension factory: `Supervisor(..., extensions=[Egress(engine, ...)])`.
    Holds what every session's proxy shares; each call makes one session's bridge.

    With `spares` (a directory), a long-running supervisor keeps one sidecar started ahead:
    starting a container is most of a session's launch time, and the agent's container can
    only be created once its sidecar runs. A spare is used only by a session with the same
    image, uid and seccomp filter; a one-shot `airlock run` makes none."""

    def __init__(
        self,
        engine: docker.DockerClient,
        *,
        secrets: SecretSource,
        broker: ConsentBroker | None,
        resolver: Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        settings: ProxySettings | None = None,
        spares: Path | None = None,
        grants: NetworkGrants | None = None,
    ) -> None:
        self.engine = engine
        # Remembered answers, shared by every session's proxy (stored, with a store).
        self.grants = grants or NetworkGrants()
        self.secrets = secrets
        self.broker = broker
        self.resolver = resolver
        self.tls = tls
        self.settings = settings
        self.spares = spares
        self._spare: asyncio.Task[_Spare] | None = None
        self.blocked = False  # "Block all network": every session's proxy refuses everything
        self._proxies: weakref.WeakSet[SessionProxy] = weakref.WeakSet()
        self._kind: EngineKind | None = None

    def engine_kind(self) -> EngineKind:
        """Which engine makes the sidecars (asked once). Blocking."""
        if self._kind is None:
            self._kind = detect_engine(self.engine)
        return self._kind

    def block_all(self, blocked: bool) -> None:
        """The user's switch: new requests and tunnels of every session are refused, and
        those under way are cut."""
        self.blocked = blocked
        if blocked:
            for proxy in list(self._proxies):
                proxy.cut()

    async def allow_host(
        self,
        session: str,
        host: str,
        port: int,
        lifetime: Lifetime = Lifetime.SESSION,
        until: float | None = None,
    ) -> bool:
        """A host the user allowed when the agent asked for it (the MCP server's
        request_host): a network grant for the session (or, answered `always`, for every
        session of its profile) that its proxy admits as if the profile listed it. False
        when the session has no proxy (its profile allows no network)."""
        for proxy in list(self._proxies):
            if proxy.session == session:
                grant = network_grant_for(
                    host,
                    port,
                    Access.CONNECT,
                    allowed=True,
                    # "Once" cannot mean one connection here: the agent asked to be let in.
                    lifetime=Lifetime.SESSION if lifetime is Lifetime.ONCE else lifetime,
                    session=session,
                    profile=proxy.profile.name,
                    expires_at=until,
                )
                assert grant is not None
                await self.grants.add(grant)
                proxy.bus.emit(
                    EventKind.GRANT_ADDED,
                    session,
                    grant.subject,
                    **self.grants.grant_added_details(grant),
                )
                return True
        return False

    async def block_host(self, profile: str, host: str, port: int, bus: EventBus) -> NetworkGrant:
        """The user's "Block this host" for an agent: a remembered refusal for every
        session of `profile` (a `NetworkGrant`, allowed False, lifetime always), stored
        where the user's other network answers are, so that it is listed in the Grants tab,
        audited, and undone by revoking it. It outranks the profile's allow list
        (`ClientConnection._refuse_blocked`); this process's proxies refuse the next
        request at once and cut what is under way to the host, other processes' within
        `app.egress.grants.POLL_SECONDS`."""
        grant = NetworkGrant(
            id=new_network_grant_id(),
            host=host.lower().rstrip("."),
            port=port,
            access=Access.CONNECT,
            allowed=False,
            lifetime=Lifetime.ALWAYS,
            session=None,
            profile=profile,
            created_at=time.time(),
        )
        await self.grants.add(grant)
        bus.emit(
            EventKind.GRANT_ADDED, None, grant.subject, **self.grants.grant_added_details(grant)
        )
        for proxy in list(self._proxies):
            if proxy.profile.name == profile:
                proxy.cut_host(
                    grant.host, port, f"cut: host {grant.subject} was blocked by the user"
                )
        return grant

    def __call__(self) -> EgressBridge:
        return EgressBridge(self)

    def make_spare(self, session: SessionContext) -> None:
        """Starts the next spare in the background, shaped like `session`'s sidecar."""
        if self.spares is None or self._spare is not None:
            return
        self._spare = asyncio.ensure_future(self._new_spare(session))

    async def take_spare(self, session: SessionContext) -> _Spare | None:
        task, self._spare = self._spare, None
        if task is None:
            return None
        try:
            spare = await task
        except (EgressError, OSError) as e:
            log.warning("the spare network bridge failed: %s", e)
            return None
        if spare.key != _spare_key(session):
            await _discard(spare)
            return None
        return spare

    async def aclose(self) -> None:
        """Removes the spare, if any: the supervisor is shutting down."""
        task, self._spare = self._spare, None
        if task is None:
            return
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        if isinstance(results[0], _Spare):
            await _discard(results[0])

    async def _new_spare(self, session: SessionContext) -> _Spare:
        assert self.spares is not None
        directory = self.spares / os.urandom(4).hex() / "net"
        directory.mkdir(mode=0o755, parents=True)
        directory.parent.chmod(0o755)
        blocked = BlockedLog("", session.bus)
        await blocked.start(directory / "netlog.sock")
        handover = ListenerHandover(PROXY_PORT)
        await handover.start(directory / "listener.sock")
        labels = dict(session.labels, **{LABEL_SESSION: "spare"})
        labels.pop(LABEL_PROFILE, None)
        bridge = EgressBridge(self)
        creating = asyncio.ensure_future(
            asyncio.to_thread(
                bridge.create_sidecar,
                session,
                directory,
                True,
                labels,
                f"airlock-spare-{directory.parent.name}",
            )
        )
        try:
            sidecar = await asyncio.shield(creating)
        except BaseException:
            creating.add_done_callback(_remove_created)  # if it made one, it goes
            await handover.close()
            await blocked.close()
            raise
        try:
            await bridge.wait_ready(sidecar, blocked, handover)
        except BaseException:
            await asyncio.to_thread(_remove, sidecar)
            await handover.close()
            await blocked.close()
            raise
        return _Spare(_spare_key(session), directory, blocked, handover, sidecar)


class EgressBridge:
    """One session's sidecar: its network witness, and its proxy when the profile allows
    anything out."""

    def __init__(self, egress: Egress) -> None:
        self._egress = egress
        self.proxy: SessionProxy | None = None
        self.blocked: BlockedLog | None = None
        self.handover: ListenerHandover | None = None
        self.sidecar: Container | None = None
        self._spare_directory: Path | None = None  # a used spare's, not under the session

    async def prepare(self, session: SessionContext) -> ContainerAdditions:
        network = session.profile.network
        proxied = bool(network.allow or network.ask or network.routes)
        egress = self._egress
        spare = await egress.take_spare(session)
        directory = spare.directory if spare else session.runtime_dir / "net"
        for name in ("listener.sock", "netlog.sock"):
            if len(str(directory / name)) > MAX_UNIX_PATH:
                raise EgressError(
                    f"the socket path is too long for a unix socket: {directory / name}"
                )
        if spare is not None:
            self.blocked, self.handover = spare.blocked, spare.handover
            self.sidecar = spare.sidecar
            self.blocked.session = session.id
            self._spare_directory = spare.directory.parent
        else:
            directory.mkdir(mode=0o755, exist_ok=True)
            directory.chmod(0o755)
            self.blocked = BlockedLog(session.id, session.bus)
            await self.blocked.start(directory / "netlog.sock")
            if proxied:
                self.handover = ListenerHandover(PROXY_PORT)
                await self.handover.start(directory / "listener.sock")
            creating = asyncio.ensure_future(
                asyncio.to_thread(
                    self.create_sidecar,
                    session,
                    directory,
                    proxied,
                    dict(session.labels, **{LABEL_ROLE: "bridge"}),
                    f"airlock-{session.id}-bridge",
                )
            )
            try:
                self.sidecar = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # The engine call goes on in its thread: remove what it makes, or it
                # outlives the session (ended at once when its client goes away).
                creating.add_done_callback(_remove_created)
                raise
            await self.wait_ready(self.sidecar, self.blocked, self.handover)
        trust = ContainerAdditions()
        ca: SessionCA | None = None
        if proxied and inspects(network):
            # The session's CA: made now, gone with the proxy; the container trusts it.
            ca = SessionCA(session.id)
            system = await asyncio.to_thread(image_bundle, self.sidecar)
            trust = await asyncio.to_thread(
                trust_additions, ca, system, session.runtime_dir / "tls"
            )
            await asyncio.to_thread(ca.warm, known_hosts(network))
        if proxied:
            assert self.handover is not None
            self.proxy = SessionProxy(
                session.id,
                session.profile,
                session.bus,
                secrets=egress.secrets,
                broker=egress.broker,
                resolver=egress.resolver,
                granted=ViewContent(session.view.root),
                tls=egress.tls,
                settings=egress.settings,
                blocked=lambda: egress.blocked,
                grants=egress.grants,
                ca=ca,
            )
            await self.proxy.start(self.handover.take())
            egress._proxies.add(self.proxy)
        if self.handover is not None:
            # Served by the proxy now, or (a spare's, for a session without network) closed,
            # which leaves the agent's port 3128 closed too.
            await self.handover.close()
        egress.make_spare(session)
        assert self.sidecar is not None
        return ContainerAdditions(
            network_mode=f"container:{self.sidecar.id}",
            environment={
                **(proxy_environment(session.profile) if proxied else {}),
                **trust.environment,
            },
            mounts=trust.mounts,
            interfaces=(WITNESS_DEVICE,),
            listening=(PROXY_PORT,) if proxied else (),
        )

    async def started(self, session: SessionContext, container_id: str) -> None:
        return None

    async def close(self) -> None:
        sidecar, self.sidecar = self.sidecar, None
        blocked, self.blocked = self.blocked, None
        if sidecar is not None:
            if blocked is not None and blocked.ready.is_set():
                # SIGTERM first: the witness reports what it counted in its last window.
                blocked.expect_hangup()
                await asyncio.to_thread(_terminate, sidecar)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(blocked.ended.wait(), WITNESS_STOP_SECONDS)
            await asyncio.to_thread(_remove, sidecar)
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            await proxy.close()
        handover, self.handover = self.handover, None
        if handover is not None:
            await handover.close()
        if blocked is not None:
            await blocked.close()
        if self._spare_directory is not None:
            await asyncio.to_thread(shutil.rmtree, self._spare_directory, True)

    def create_sidecar(
        self,
        session: SessionContext,
        directory: Path,
        proxied: bool,
        labels: dict[str, str],
        name: str,
    ) -> Container:
        from docker.types import LogConfig, Mount

        api = self._egress.engine.api
        docker_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            cap_add=list(WITNESS_CAPABILITIES),
            devices=["/dev/net/tun:/dev/net/tun:rwm"],
            # Docker turns IPv6 off in a namespace without an IPv6 network; an IPv6 attempt
            # would then fail unseen. With it on, it meets the witness like any other.
            sysctls={
                "net.ipv6.conf.all.disable_ipv6": "0",
                "net.ipv6.conf.default.disable_ipv6": "0",
            },
            security_opt=[
                "no-new-privileges:true",
                *([f"seccomp={session.seccomp}"] if session.seccomp else []),
            ],
            pids_limit=16,  # the witness alone: one process, no threads
            mem_limit=128 * 1024 * 1024,
            memswap_limit=128 * 1024 * 1024,
            ipc_mode="private",
            init=False,  # the witness is PID 1: no process keeps root's capabilities
            # Its last lines explain a failed start; no more is kept.
            log_config=LogConfig(
                type=LogConfig.types.JSON, config={"max-size": "64k", "max-file": "1"}
            ),
            mounts=[
                Mount(
                    target=SOCKET_DIR,
                    source=str(directory),
                    type="bind",
                    read_only=True,
                    propagation="rprivate",
                )
            ],
        )
        kind = self._egress.engine_kind()
        # Podman: the user namespace the agent joins with the network (app/engine_kind.py).
        host_config = for_engine(kind, docker_config, "none", Dirs.for_user().runtime)
        kwargs: dict[str, Any] = {
            "image": session.profile.image,
            "command": sidecar_command(session.identity.uid, session.identity.gid, proxied),
            "name": name,
            "user": "0:0",  # only for the witness's set-up; see the module's docstring
            "environment": {"PATH": "/usr/bin:/bin"},
            "labels": dict(labels, **{LABEL_ROLE: "bridge"}),
            "hostname": "airlock",
            "detach": True,
            "host_config": host_config,
        }
        try:
            created = api.create_container(**kwargs)
        except docker.errors.APIError as e:
            raise EgressError(
                f"{kind.describe()} refused the network bridge: {one_line(str(e.explanation))}"
            ) from e
        container = self._egress.engine.containers.prepare_model({"Id": created["Id"]})
        try:
            container.start()
            container.reload()
            return container
        except docker.errors.APIError as e:
            # E.g. the session ended meanwhile and took the socket directory with it.
            _remove(container)
            raise EgressError(f"cannot start the network bridge: {e.explanation}") from e

    async def wait_ready(
        self, sidecar: Container, blocked: BlockedLog, handover: ListenerHandover | None
    ) -> None:
        """Until the witness owns the routes and dropped its privileges, and (`handover`)
        its PID 1 handed over the proxy's port — both before the agent's first packet."""
        pid = int(sidecar.attrs["State"]["Pid"] or 0)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if handover is not None and handover.received.is_set():
                if handover.error is not None:
                    raise EgressError(
                        f"the network bridge's hand-over was refused: {handover.error}"
                    )
                if handover.sender != pid:
                    raise EgressError(
                        f"the proxy's port was handed over by pid "
                        f"{handover.sender}, not by the bridge (pid {pid})"
                    )
            if blocked.ready.is_set() and (handover is None or handover.received.is_set()):
                return
            await asyncio.to_thread(sidecar.reload)
            if sidecar.status not in ("created", "running"):
                logs = (await asyncio.to_thread(sidecar.logs, tail=5)).decode("utf-8", "replace")
                hint = ""
                if "unrecognized arguments" in logs or "No such file" in logs:
                    hint = (
                        " (the agent image is older than this Airlock: "
                        "`airlock image build` updates it)"
                    )
                raise EgressError(f"the network bridge exited: {logs.strip()}{hint}")
            await asyncio.sleep(0.02)
        raise EgressError(f"the network bridge was not ready within {READY_TIMEOUT:.0f} s")


def _spare_key(session: SessionContext) -> tuple[str, int, int, str]:
    return (session.profile.image, session.identity.uid, session.identity.gid, session.seccomp)


async def _discard(spare: _Spare) -> None:
    await asyncio.to_thread(_remove, spare.sidecar)
    await spare.blocked.close()
    await asyncio.to_thread(shutil.rmtree, spare.directory.parent, True)


def _remove_created(creating: asyncio.Future[Container]) -> None:
    if creating.cancelled() or creating.exception() is not None:
        return
    # A done callback runs on the loop: the engine call goes to a thread of its own.
    threading.Thread(target=_remove, args=(creating.result(),), daemon=True).start()


def _terminate(container: Container) -> None:
    try:
        container.kill(signal="SIGTERM")
    except docker.errors.APIError as e:  # NotFound included: it is gone already
        log.debug("cannot signal bridge %s: %s", container.short_id, e.explanation)


REMOVE_TRIES = 5


def _remove(container: Container) -> None:
    # Podman refuses a forced remove while the container is between running and stopped
    # (its SIGKILL finds "container state improper: stopped" just after the witness left
    # on SIGTERM): tried again a moment later, it is gone. Docker removes it the first time.
    for attempt in range(REMOVE_TRIES):
        try:
            container.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if attempt + 1 < REMOVE_TRIES and "state improper" in str(e.explanation):
                time.sleep(0.1 * (attempt + 1))
                continue
            log.warning("cannot remove bridge %s: %s", container.short_id, e.explanation)
            return
