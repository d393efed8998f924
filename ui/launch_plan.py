"""What the Launch dialog says and decides, in plain Python: a profile's powers in words, why a
launch cannot go yet, how far a launch got, what to do after a failed one, and the last
choice as it is remembered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.errors import (
    AirlockError,
    EgressError,
    EngineError,
    GrantError,
    ImageError,
    ProfileError,
    SandboxRefused,
)
from app.grants import Mode
from app.profiles import HostRule, Profile


def human_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def human_duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{secs} s" if secs or not (hours or minutes) else "")
    return " ".join(p for p in parts if p)


def _host(rule: HostRule) -> str:
    ports = "" if rule.ports == (443,) else ":" + ",".join(str(p) for p in rule.ports)
    limits = [", ".join(rule.methods)] if rule.methods else []
    limits += [", ".join(rule.paths)] if rule.paths else []
    return rule.host + ports + (f" ({'; '.join(limits)})" if limits else "")


def _plural(count: float, one: str, many: str) -> str:
    number = f"{count:g}"
    return f"{number} {one if count == 1 else many}"


def powers(profile: Profile) -> tuple[tuple[str, str], ...]:
    """What an agent of `profile` may do, one (title, text) row per kind of power, in the
    words the Launch dialog shows before anything runs."""
    network = profile.network
    if not (network.allow or network.ask or network.routes):
        reach = "None: it has no network at all"
    else:
        lines = []
        if network.allow:
            lines.append("May reach " + ", ".join(_host(r) for r in network.allow))
        if network.ask:
            lines.append("Asks you first for " + ", ".join(_host(r) for r in network.ask))
        for route in network.routes:
            lines.append(
                f"Uses {route.upstream.split('://', 1)[1]} with your “{route.secret}” key, "
                "which stays with Airlock"
            )
        lines.append("Any other host is refused")
        reach = "\n".join(lines)
    resources = profile.resources
    limits = (
        f"{human_size(resources.memory)} memory · "
        f"{_plural(resources.cpus, 'CPU', 'CPUs')} · "
        f"{_plural(resources.pids, 'process', 'processes')}"
    )
    time_limit = (
        f"Stopped after {human_duration(profile.timeout)}"
        if profile.timeout
        else "None: it runs until it ends or you stop it"
    )
    approval = profile.approval
    if not (network.allow or network.ask):
        uploads = "Nothing: it reaches no host it could upload to"
        if network.routes:
            uploads = (
                "Only its requests to its own service; anything that looks like a secret "
                "asks you first"
            )
    elif approval.uploads == "never":
        uploads = (
            "Sent without asking; only what looks like a secret (a key, an IBAN…) asks you first"
        )
    elif approval.uploads == "always":
        uploads = "Asks you before anything is uploaded"
    else:
        uploads = (
            f"Asks you before more than {human_size(approval.upload_threshold)} goes to "
            "one host, or anything that looks like a secret"
        )
    files = ["Only what you pick below; while it runs it may ask you for more"]
    if profile.grants:
        files.append(
            "Also, every time: "
            + ", ".join(
                f"{g.path} ({'read and write' if g.mode == 'rw' else 'read only'})"
                for g in profile.grants
            )
        )
    if approval.read:
        files.append("Opens without asking, read only: " + ", ".join(approval.read))
    if approval.write:
        files.append("Saves without asking into: " + ", ".join(approval.write))
    changes = (
        "Applied without asking (except what could run code on your computer)"
        if approval.commit == "auto"
        else "Every change waits for your review"
    )
    return (
        ("Network", reach),
        ("Limits", limits),
        ("Time limit", time_limit),
        ("Uploads", uploads),
        ("Files", "\n".join(files)),
        ("Changes", changes),
    )


def default_mode(profile: Profile) -> Mode:
    """The access proposed for each path added: the profile's `grant_mode`."""
    return Mode.READ_WRITE if profile.grant_mode == "rw" else Mode.READ


def refusal(profile: str, paths: Sequence[tuple[Path, bool]]) -> str:
    """Why the Launch button is off (empty when it may go): `paths` are the chosen paths,
    each with whether it exists now."""
    if not profile:
        return "Choose an agent first."
    if not paths:
        return (
            "Add at least one file or folder: an agent sees nothing of yours but what you add here."
        )
    missing = [path for path, exists in paths if not exists]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"{missing[0]} does not exist{more}: remove it or add it again."
    return ""


# How far a launch got: the supervisor's progress steps (Supervisor.run) and the sandbox
# self-check's event, in the order they come, as the dialog names them.
STAGES = (
    ("checking the image", "Check the agent's image"),
    ("preparing the granted files", "Prepare the files you picked"),
    ("creating the container", "Create its container"),
    ("starting the container", "Start it and check its sandbox"),
)
SANDBOX_VERIFIED = "sandbox verified"  # the step the app reports for the self-check's pass


def stage_of(step: str) -> int:
    """The index in STAGES of a progress step: its stage runs (and those before are done).
    `SANDBOX_VERIFIED` is past the last stage; an unknown step keeps none (-1)."""
    if step == SANDBOX_VERIFIED:
        return len(STAGES)
    for index, (name, _) in enumerate(STAGES):
        if step == name:
            return index
    return -1


def next_step(error: BaseException, profile: Profile | None = None) -> str:
    """What to do after a launch failed with `error`, in one sentence."""
    if isinstance(error, GrantError):
        return "Remove that file or folder from the list, or add it again, then launch."
    if isinstance(error, ImageError):
        agent = ""
        if profile is not None and profile.image.startswith("airlock-agent:"):
            tag = profile.image.partition(":")[2]
            agent = "" if tag == "bookworm" else f" --agent {tag}"
        return (
            f"Build the image in a terminal with `airlock image build{agent}`, then launch "
            "again; `airlock doctor` checks every profile's image."
        )
    if isinstance(error, SandboxRefused):
        return (
            "The agent did not run: its container was not sandboxed as asked. Run "
            "`airlock doctor` in a terminal to see what the engine lacks."
        )
    if isinstance(error, EngineError):
        return (
            "Check that the container engine runs (`sudo systemctl start docker`); "
            "`airlock doctor` in a terminal says what is missing and how to fix it."
        )
    if isinstance(error, ProfileError):
        return "Fix the profile it names (`airlock profiles check FILE` says where), then launch."
    if isinstance(error, EgressError):
        return (
            "The agent's network could not be set up: `airlock doctor` in a terminal checks "
            "the keyring and the engine."
        )
    if isinstance(error, AirlockError):
        return "Fix what it says, then launch again; `airlock doctor` checks this machine."
    return "This is a bug in Airlock: the log has the details. `airlock doctor` checks the machine."


@dataclass(frozen=True, slots=True)
class LaunchChoice:
    """What the Launch dialog was last told: the agent and each path with its access."""

    profile: str
    paths: tuple[tuple[Path, Mode], ...] = ()

    def encode(self) -> str:
        return json.dumps(
            {"profile": self.profile, "paths": [[str(p), str(m)] for p, m in self.paths]}
        )

    @classmethod
    def decode(cls, text: str) -> LaunchChoice | None:
        """The choice stored as `text`, or None if there is none or it is not one (a
        settings file edited by hand is read, never trusted)."""
        try:
            data = json.loads(text)
            profile = data["profile"]
            entries = data["paths"]
            if not isinstance(profile, str) or not isinstance(entries, list):
                return None
            paths = []
            for entry in entries:
                path, mode = entry
                if not isinstance(path, str) or not path.startswith("/"):
                    return None
                paths.append((Path(path), Mode(mode)))
        except (ValueError, TypeError, KeyError):
            return None
        return cls(profile, tuple(paths))
