"""`airlock doctor`: what this machine lacks for Airlock, each as a finding with what to do.

The checks are pure functions from facts to `Finding`s, tested by tables; the probes that
gather the facts (engine, images, kernel settings, disk, keyring) sit at the bottom, each
bounded in time so that a hung engine or bus cannot hang the command. Whether the D-Bus
names of a notification server and a tray host are owned is asked by the caller (D-Bus is
not the core's), and handed in as facts.

The per-session self-check (one container's actual settings) is not here: this looks at the
machine, before any session.
"""

from __future__ import annotations

import json
import pwd
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from app.egress.secret_service import (
    BusFacts,
    Collection,
    KeyringFacts,
    keyring_problem,
    within,
)
from app.engine import detect_engine
from app.engine_kind import UNKNOWN, EngineKind
from app.errors import AirlockError, EngineError
from app.gvisor import RUNTIME_ARGS, is_gvisor, registration_fix, registration_problem
from app.image import DEFAULT_IMAGE, RECIPE_LABEL, ImageState, Recipe, image_info
from app.profiles import Profile, ProfileCatalog
from app.sessions.limits import DISK_RESERVE

ENGINE_SECONDS = 5.0
GIB = 1024**3
# Below this much free space a session's staged writes soon hit the reserve the sessions
# keep (DISK_RESERVE) and it is stopped; below the second, a large grant would.
DISK_PROBLEM = 4 * DISK_RESERVE
DISK_WARN = 2 * GIB
# One watch per directory of every granted and staged tree; the kernel's old default (8192)
# is exhausted by one source checkout with its node_modules.
INOTIFY_WATCHES_WARN = 65536
INOTIFY_INSTANCES_WARN = 128
NOTIFICATIONS = "org.freedesktop.Notifications"
TRAY_HOST = "org.kde.StatusNotifierWatcher"


class Status(Enum):
    OK = "ok"
    WARN = "warn"
    PROBLEM = "problem"


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    status: Status
    detail: str
    fix: str = ""


# -- facts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineFacts:
    where: str  # DOCKER_HOST, or the default socket
    error: str = ""  # why it cannot be used ("" when it answered)
    product: str = ""  # "Docker Engine 20.10.24", "Podman Engine 4.9.3"
    api: str = ""
    security_options: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()
    default_runtime: str = ""
    cgroup: str = ""
    kind: EngineKind = UNKNOWN  # which engine: app/engine_kind.py
    runsc: str = "not asked"  # why runsc cannot run sessions (app/gvisor.py); "": it can

    @property
    def rootless(self) -> bool:
        return "name=rootless" in self.security_options or self.kind.rootless

    @property
    def seccomp(self) -> bool:
        return any(o.startswith("name=seccomp") for o in self.security_options)


@dataclass(frozen=True, slots=True)
class ImageFacts:
    image: str
    profiles: tuple[str, ...]  # the profiles that run it
    state: str  # "current", "outdated", "missing", "mismatch" (against the pin), "error"
    build: str  # the command that builds it ("" if Airlock does not build it)
    detail: str = ""
    needed: bool = False  # a problem when missing, not a warning


@dataclass(frozen=True, slots=True)
class UsernsFacts:
    max_namespaces: int | None  # /proc/sys/user/max_user_namespaces
    unprivileged_clone: int | None  # Debian's kernel.unprivileged_userns_clone
    apparmor_restricted: int | None  # Ubuntu's kernel.apparmor_restrict_unprivileged_userns
    subordinate_ids: bool  # the user has /etc/subuid and /etc/subgid ranges


@dataclass(frozen=True, slots=True)
class DiskFacts:
    where: Path
    free: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class InotifyFacts:
    watches: int | None
    instances: int | None


@dataclass(frozen=True, slots=True)
class DesktopFacts:
    display: bool  # DISPLAY or WAYLAND_DISPLAY set
    notifications: bool | None  # the name is owned on the session bus; None: not asked
    tray_host: bool | None
    error: str = ""  # why the names could not be asked


# -- checks (pure) ---------------------------------------------------------------------------


def check_engine(engine: EngineFacts) -> Finding:
    if not engine.error:
        return Finding(
            "engine",
            Status.OK,
            f"{engine.product or 'an engine'} at {engine.where} (API {engine.api})",
        )
    text = engine.error
    if "Permission denied" in text or "PermissionError" in text:
        fix = (
            "add yourself to the docker group (sudo usermod -aG docker $USER) and log in "
            "again, or point DOCKER_HOST at a rootless engine's socket"
        )
    elif "did not answer within" in text or "timed out" in text.lower():
        fix = (
            f"the engine at {engine.where} accepts connections but does not answer: "
            "restart it (sudo systemctl restart docker)"
        )
    else:
        fix = (
            "start it (sudo systemctl start docker; rootless Podman: systemctl --user "
            "start podman.socket and DOCKER_HOST=unix://$XDG_RUNTIME_DIR/podman/podman.sock)"
            ", or run `sudo packaging/setup demo`, which installs and starts one"
        )
    return Finding(
        "engine", Status.PROBLEM, f"no Docker engine answers at {engine.where}: {text}", fix
    )


def check_engine_mode(engine: EngineFacts) -> Finding:
    if engine.rootless:
        return Finding("rootless", Status.OK, "the engine runs rootless (as your user)")
    return Finding(
        "rootless",
        Status.OK,
        "the engine runs as root: whoever may use its socket is root-equivalent, "
        "which is why Airlock never hands the socket to an agent",
    )


def check_engine_limits(engine: EngineFacts) -> Finding:
    """Whether the engine can hold a session's resource limits: one that drops them is
    refused by the sandbox check at every session, so say so before."""
    kind = engine.kind
    if not kind.limits_enforced:
        return Finding(
            "limits",
            Status.PROBLEM,
            f"{kind.describe()} cannot enforce memory, pids and CPU limits or "
            "ulimits (a rootless engine has no cgroup of its own on cgroup v1) and "
            "drops them without an error: the sandbox check refuses every session "
            "unless its profile accepts running without them "
            '([sandbox] accept_weaker = ["limits"], '
            "with a warning at each session)",
            "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) and delegate "
            "the cpu, memory and pids controllers to your user, or use rootful "
            "Docker (sudo packaging/setup demo)",
        )
    if kind.podman and kind.rootless:
        return Finding(
            "limits",
            Status.WARN,
            f"{kind.describe()}: limits hold only with the cpu, memory and pids "
            "controllers delegated to your user; the sandbox check refuses a "
            "session whose limits were dropped (not yet tested by Airlock here)",
        )
    return Finding(
        "limits",
        Status.OK,
        f"{kind.describe()} enforces the profiles' limits "
        "(the sandbox check verifies them at each session)",
    )


def check_gvisor(engine: EngineFacts, wanted: Mapping[str, str]) -> Finding:
    """Whether runsc is registered as Airlock needs it (app/gvisor.py), and if not, how.
    `wanted`: profile name → the runtime it names."""
    gvisor = sorted(p for p, r in wanted.items() if is_gvisor(r))
    if not engine.runsc:
        users = f"; used by {', '.join(gvisor)}" if gvisor else ""
        return Finding(
            "gVisor",
            Status.OK,
            f'runsc is registered with {" ".join(RUNTIME_ARGS)}: `runtime = "runsc"` '
            f"runs a profile under gVisor{users}",
        )
    if gvisor:
        return Finding(
            "gVisor",
            Status.PROBLEM,
            f"{engine.runsc}: sessions of {', '.join(gvisor)} are refused before they start",
            registration_fix(),
        )
    return Finding(
        "gVisor",
        Status.OK,
        f"{engine.runsc} (optional: no profile uses it); to run profiles under gVisor: "
        + registration_fix(),
    )


def check_seccomp(engine: EngineFacts) -> Finding:
    if engine.seccomp:
        return Finding(
            "seccomp",
            Status.OK,
            "the engine applies seccomp filters (Airlock's profile in profiles/seccomp/)",
        )
    return Finding(
        "seccomp",
        Status.PROBLEM,
        "the engine applies no seccomp filters: Airlock's system-call filter would "
        "be silently ignored",
        "use an engine built with seccomp (Debian's docker.io and podman are; "
        "install libseccomp2) and a kernel with CONFIG_SECCOMP_FILTER",
    )


def check_userns(userns: UsernsFacts, engine_rootless: bool) -> Finding:
    off: list[str] = []
    settings: list[str] = []
    if userns.max_namespaces == 0:
        off.append("user.max_user_namespaces is 0")
        settings.append("user.max_user_namespaces=65536")
    if userns.unprivileged_clone == 0:
        off.append("kernel.unprivileged_userns_clone is 0")
        settings.append("kernel.unprivileged_userns_clone=1")
    if userns.apparmor_restricted == 1:
        off.append("kernel.apparmor_restrict_unprivileged_userns is 1")
        settings.append("kernel.apparmor_restrict_unprivileged_userns=0")
    if not off and userns.subordinate_ids:
        return Finding(
            "user namespaces",
            Status.OK,
            "available to your user, with subordinate ids (/etc/subuid)",
        )
    if off:
        why = "unprivileged user namespaces are off (" + "; ".join(off) + ")"
        fix = f"sudo sysctl -w {' '.join(settings)} (and the same in /etc/sysctl.d/ to keep it)"
    else:
        why = "your user has no subordinate ids (/etc/subuid, /etc/subgid)"
        fix = "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER"
    needs = (
        "a rootless engine runs no container without them"
        if engine_rootless
        else "`airlock image build` then needs sudo (mmdebstrap --mode=unshare)"
    )
    return Finding(
        "user namespaces",
        Status.PROBLEM if engine_rootless else Status.WARN,
        f"{why}: {needs}",
        fix,
    )


def check_runtimes(engine: EngineFacts, wanted: Mapping[str, str]) -> Finding:
    """`wanted`: profile name → the runtime it names."""
    have = ", ".join(sorted(engine.runtimes)) or "none listed"
    missing = {p: r for p, r in sorted(wanted.items()) if r not in engine.runtimes}
    if missing:
        runtimes = sorted(set(missing.values()))
        names = ", ".join(f"{p} ({r})" for p, r in missing.items())
        return Finding(
            "runtime",
            Status.PROBLEM,
            f"profiles name a runtime the engine does not have: {names}; the engine has: {have}",
            f"install {' and '.join(runtimes)} and register it in "
            '/etc/docker/daemon.json ("runtimes"), then restart the engine; or '
            "remove `runtime` from those profiles",
        )
    if wanted:
        return Finding(
            "runtime",
            Status.OK,
            "the runtimes profiles name are installed: "
            + ", ".join(f"{p} ({r})" for p, r in sorted(wanted.items())),
        )
    return Finding(
        "runtime",
        Status.OK,
        f"no profile names a runtime (default: {engine.default_runtime or '?'}; "
        f"the engine has: {have})",
    )


def check_image(image: ImageFacts) -> Finding:
    name = f"image {image.image}"
    used = f"run by {', '.join(image.profiles)}" if image.profiles else "the base image"
    how = (
        f"`{image.build}`"
        if image.build
        else f"docker pull {image.image}, or docker build -t {image.image} …"
    )
    if image.state == "current":
        return Finding(name, Status.OK, f"present and matching its recipe ({used})")
    if image.state == "present":
        return Finding(name, Status.OK, f"present ({used}; not built by Airlock)")
    if image.state == "outdated":
        return Finding(
            name,
            Status.WARN,
            f"present, but not the recipe this Airlock builds ({used}): sessions run it as it is",
            f"rebuild it: {how}",
        )
    if image.state == "missing":
        return Finding(
            name,
            Status.PROBLEM if image.needed else Status.WARN,
            f"not in the engine ({used}): those profiles cannot run",
            f"build it: {how}",
        )
    if image.state == "mismatch":
        return Finding(
            name,
            Status.PROBLEM,
            f"{image.detail} ({used}): sessions refuse it",
            f"get the pinned image ({how}), or update the profile's image_digest",
        )
    return Finding(name, Status.WARN, f"not checked: {image.detail}")


def check_keyring(keyring: KeyringFacts) -> Finding:
    if keyring.ready:
        where = keyring.backend.rsplit(".", 2)[-2] if "." in keyring.backend else "?"
        if keyring.collection is Collection.UNLOCKED:
            return Finding("keyring", Status.OK, f"{where}: the login keyring is unlocked")
        if keyring.collection is Collection.UNKNOWN:
            return Finding("keyring", Status.OK, f"{where} keeps the route credentials")
        advice = keyring_problem(keyring)
        return Finding(
            "keyring",
            Status.WARN,
            f"{advice.problem}: your desktop will ask for its password when a "
            "route first needs a key",
            advice.fix,
        )
    advice = keyring_problem(keyring)
    return Finding(
        "keyring",
        Status.PROBLEM,
        f"{advice.problem}: profiles with routes (claude-code, codex, …) cannot get their API keys",
        advice.fix,
    )


def check_session_bus(keyring: KeyringFacts) -> Finding:
    bus: BusFacts = keyring.bus
    if bus.reachable:
        how = "" if bus.variable else " (the login's own, DBUS_SESSION_BUS_ADDRESS unset)"
        return Finding("session bus", Status.OK, f"{bus.address}{how}")
    advice = keyring_problem(
        KeyringFacts(bus, "", "", "", Collection.UNKNOWN, keyring.keyring_daemon, keyring.display)
    )
    return Finding(
        "session bus",
        Status.PROBLEM,
        f"{advice.problem}: the desktop app, the keyring and notifications need it",
        advice.fix,
    )


def check_desktop(desktop: DesktopFacts) -> list[Finding]:
    if not desktop.display:
        detail = (
            "no graphical session here: the command line asks on the terminal "
            "(`airlock ask` from another one)"
        )
        return [Finding("notifications", Status.OK, detail), Finding("tray", Status.OK, detail)]
    if desktop.notifications is None or desktop.tray_host is None:
        why = desktop.error or "no session bus"
        return [
            Finding("notifications", Status.WARN, f"not checked: {why}"),
            Finding("tray", Status.WARN, f"not checked: {why}"),
        ]
    return [
        Finding("notifications", Status.OK, f"{NOTIFICATIONS} is on the session bus")
        if desktop.notifications
        else Finding(
            "notifications",
            Status.WARN,
            "no notification server on the session bus: questions and refusals show "
            "only in the desktop app's window",
            "run one (GNOME and KDE have theirs; elsewhere dunst, mako or xfce4-notifyd)",
        ),
        Finding("tray", Status.OK, f"a StatusNotifierItem tray host ({TRAY_HOST})")
        if desktop.tray_host
        else Finding(
            "tray",
            Status.WARN,
            "no StatusNotifierItem tray host on the session bus: the tray icon needs an "
            "XEmbed tray instead, or does not show",
            "GNOME: install the AppIndicator extension (gnome-shell-extension-appindicator)"
            "; other desktops: enable their system tray",
        ),
    ]


def check_disk(disk: DiskFacts) -> Finding:
    if disk.error:
        return Finding(
            "disk", Status.WARN, f"cannot tell the free space at {disk.where}: {disk.error}"
        )
    free = f"{disk.free / GIB:.1f} GiB free at {disk.where}, where sessions stage their writes"
    fix = "free space there, or move Airlock's state to a larger disk (XDG_STATE_HOME)"
    if disk.free < DISK_PROBLEM:
        return Finding(
            "disk",
            Status.PROBLEM,
            f"{free}: sessions stop once less than {DISK_RESERVE // 1024**2} MiB is left",
            fix,
        )
    if disk.free < DISK_WARN:
        return Finding("disk", Status.WARN, f"only {free}", fix)
    return Finding("disk", Status.OK, free)


def check_inotify(inotify: InotifyFacts) -> Finding:
    low = []
    fixes = []
    if inotify.watches is not None and inotify.watches < INOTIFY_WATCHES_WARN:
        low.append(f"fs.inotify.max_user_watches is {inotify.watches}")
        fixes.append("fs.inotify.max_user_watches=524288")
    if inotify.instances is not None and inotify.instances < INOTIFY_INSTANCES_WARN:
        low.append(f"fs.inotify.max_user_instances is {inotify.instances}")
        fixes.append("fs.inotify.max_user_instances=512")
    if low:
        return Finding(
            "inotify",
            Status.WARN,
            "; ".join(low) + ": large granted folders would be partly unwatched "
            "(their activity not reported)",
            f"sudo sysctl -w {' '.join(fixes)} (and in /etc/sysctl.d/ to keep it)",
        )
    if inotify.watches is None:
        return Finding("inotify", Status.WARN, "cannot read the inotify limits (/proc/sys)")
    return Finding(
        "inotify", Status.OK, f"{inotify.watches} watches, {inotify.instances} instances per user"
    )


def check_profiles(invalid: Mapping[str, str]) -> Finding | None:
    if not invalid:
        return None
    return Finding(
        "profiles",
        Status.PROBLEM,
        "; ".join(f"{name}: {why}" for name, why in sorted(invalid.items())),
        "fix them (`airlock profiles check FILE` says where), or remove them",
    )


def exit_status(findings: Iterable[Finding]) -> int:
    return 1 if any(f.status is Status.PROBLEM for f in findings) else 0


def as_json(findings: Sequence[Finding]) -> str:
    def entry(finding: Finding) -> dict[str, Any]:
        return dict(asdict(finding), status=finding.status.value)

    return json.dumps(
        {"ok": exit_status(findings) == 0, "findings": [entry(f) for f in findings]}, indent=2
    )


# -- probes (blocking, bounded in time) ----------------------------------------------------


def probe_engine(
    environ: Mapping[str, str], seconds: float = ENGINE_SECONDS
) -> tuple[EngineFacts, docker.DockerClient | None]:
    where = environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")

    def ask() -> tuple[EngineFacts, docker.DockerClient]:
        client = docker.from_env(timeout=max(1, int(seconds)), environment=dict(environ))
        version = client.version()
        info = client.info()
        components = {
            c.get("Name", ""): c.get("Version", "") for c in version.get("Components") or []
        }
        product = (
            f"Docker Engine {components['Engine']}"
            if "Engine" in components
            else f"Podman {components['Podman Engine']}"
            if "Podman Engine" in components
            else ""
        )
        return EngineFacts(
            where=where,
            product=product or f"engine {version.get('Version', '?')}",
            api=str(version.get("ApiVersion", "?")),
            security_options=tuple(info.get("SecurityOptions") or ()),
            runtimes=tuple(sorted(info.get("Runtimes") or {})),
            runsc=registration_problem(info.get("Runtimes") or {}) or "",
            default_runtime=str(info.get("DefaultRuntime", "")),
            cgroup=str(info.get("CgroupVersion", "")),
            kind=detect_engine(client),
        ), client

    try:
        return within(seconds + 1, ask, f"the engine at {where}")
    except TimeoutError as e:
        return EngineFacts(where, error=str(e)), None
    except (docker.errors.DockerException, requests.exceptions.RequestException, EngineError) as e:
        return EngineFacts(where, error=_first_line(e)), None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def profile_images(catalog: ProfileCatalog) -> tuple[dict[str, list[Profile]], dict[str, str]]:
    """The images the available profiles run (image → its profiles), and the profiles that
    do not load (name → why)."""
    images: dict[str, list[Profile]] = {}
    invalid: dict[str, str] = {}
    for name, path in catalog.available():
        try:
            profile = catalog.load(str(path))
        except AirlockError as e:
            invalid[name] = str(e)
            continue
        images.setdefault(profile.image, []).append(profile)
    return images, invalid


def probe_image(
    client: docker.DockerClient,
    image: str,
    profiles: Sequence[Profile],
    needed: bool,
    seconds: float = ENGINE_SECONDS,
) -> ImageFacts:
    names = tuple(p.name for p in profiles)
    build = _build_command(image)

    def ask() -> ImageFacts:
        if image == DEFAULT_IMAGE:
            info = image_info(client, image, Recipe.default())
            state = {
                ImageState.CURRENT: "current",
                ImageState.OUTDATED: "outdated",
                ImageState.MISSING: "missing",
            }[info.state]
            return ImageFacts(image, names, state, build, needed=needed)
        try:
            found = client.images.get(image)
        except docker.errors.ImageNotFound:
            return ImageFacts(image, names, "missing", build, needed=needed)
        pinned = {p.image_digest for p in profiles if p.image_digest}
        digests = {found.id} | {d.partition("@")[2] for d in found.attrs.get("RepoDigests") or []}
        if pinned - digests:
            return ImageFacts(
                image,
                names,
                "mismatch",
                build,
                f"it is {found.id}, not the pinned {', '.join(sorted(pinned))}",
            )
        expected = _expected_recipe(image)
        if expected is None:
            return ImageFacts(image, names, "present", build)
        label = (found.labels or {}).get(RECIPE_LABEL, "")
        return ImageFacts(image, names, "current" if label == expected else "outdated", build)

    try:
        return within(seconds, ask, f"the engine's image {image}")
    except (
        TimeoutError,
        AirlockError,
        docker.errors.DockerException,
        requests.exceptions.RequestException,
    ) as e:
        return ImageFacts(image, names, "error", build, _first_line(e))


def _agent_of(image: str) -> str:
    from app.agent_image import AGENTS, agent_tag

    return next((agent for agent in AGENTS if agent_tag(agent) == image), "")


def _build_command(image: str) -> str:
    if image == DEFAULT_IMAGE:
        return "airlock image build"
    agent = _agent_of(image)
    return f"airlock image build --agent {agent}" if agent else ""


def _expected_recipe(image: str) -> str | None:
    from app.agent_image import pinned_labels

    agent = _agent_of(image)
    if not agent:
        return None
    try:
        return pinned_labels(agent)[RECIPE_LABEL]
    except AirlockError:
        return None


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def probe_userns(uid: int) -> UsernsFacts:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)

    def has_range(path: str) -> bool:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return False
        return any(line.split(":", 1)[0] in (user, str(uid)) for line in lines)

    return UsernsFacts(
        _read_int("/proc/sys/user/max_user_namespaces"),
        _read_int("/proc/sys/kernel/unprivileged_userns_clone"),
        _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        uid == 0 or (has_range("/etc/subuid") and has_range("/etc/subgid")),
    )


def probe_disk(where: Path) -> DiskFacts:
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError as e:
        return DiskFacts(where, 0, e.strerror or str(e))
    return DiskFacts(where, usage.free)


def probe_inotify() -> InotifyFacts:
    return InotifyFacts(
        _read_int("/proc/sys/fs/inotify/max_user_watches"),
        _read_int("/proc/sys/fs/inotify/max_user_instances"),
    )


def has_display(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
