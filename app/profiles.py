"""Agent profiles: TOML files validated once, at load, into frozen models.

A profile is untrusted input (users download them), so every field is checked and every
error names the file, the key and the reason.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.errors import ProfileError
from app.weaker import accepted_name

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOST_PATTERN = re.compile(rf"^(\*\.)?({LABEL}\.)*{LABEL}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by Airlock itself; a profile must not be able to point the agent elsewhere.
RESERVED_ENV = frozenset(
    {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "DBUS_SESSION_BUS_ADDRESS",
        "DBUS_SYSTEM_BUS_ADDRESS",
        "AIRLOCK_SESSION",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DOCKER_HOST",
    }
)


def parse_size(value: object) -> int:
    """`512m`, `2g`, `64k` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512m or 2g")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like 512m or 2g")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)i?b?\s*", value.lower())
    if not match:
        raise ValueError(f"invalid size {value!r} (use e.g. 64k, 512m, 2g)")
    size = int(float(match.group(1)) * SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise ValueError("must be positive")
    return size


def parse_duration(value: object) -> float:
    """`90s`, `30m`, `2h` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 30m or 2h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value.lower())
        if not match:
            raise ValueError(f"invalid duration {value!r} (use e.g. 90s, 30m, 2h)")
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError("expected a duration like 90s, 30m or 2h")
    if not math.isfinite(seconds) or seconds <= 0:  # TOML and JSON can say nan and inf
        raise ValueError("must be a positive, finite duration")
    return seconds


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


SafeText = Annotated[str, AfterValidator(_no_control_chars)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Resources(Strict):
    memory: Size = 1024**3
    cpus: float = Field(default=1.0, gt=0, le=64)
    pids: int = Field(default=256, ge=8, le=32768)
    tmpfs: Size = 256 * 1024**2
    staging: Size = 1024**3  # the largest file a commit accepts from the agent


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"})


class HostRule(Strict):
    """A host the agent may reach: `name`, `*.suffix`, optionally `:port`. `methods` and
    `paths` limit plain-HTTP requests and inspected HTTPS; an opaque tunnel shows neither,
    so a rule with `methods` allows it only if it lists CONNECT, and one with `paths` not at
    all. Empty means any. `inspect` (None: the profile's `network.inspect`) says whether
    HTTPS to the host is decrypted and seen like plain HTTP."""

    host: str
    ports: tuple[int, ...] = (443,)
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # "/v1/messages" exactly, "/repos/*" and anything below
    inspect: bool | None = None

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if (
                not path.startswith("/")
                or "?" in path
                or "#" in path
                or any(ord(c) <= 32 or ord(c) == 127 for c in path)
                or "*" in path[:-1]
            ):
                raise ValueError(
                    f"invalid path {path!r} (use e.g. /v1/messages or /repos/*: "
                    "absolute, no query, `*` only at the end)"
                )
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(method.upper() for method in value)
        unknown = sorted(set(upper) - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}")
        return upper

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not HOST_PATTERN.fullmatch(value.lower()):
            raise ValueError(
                f"invalid host {value!r} (use a name like api.example.com or *.example.com)"
            )
        return value.lower()

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 0 < p < 65536 for p in value):
            raise ValueError("ports must be between 1 and 65535")
        return value


def _host_rule(value: object) -> object:
    """Accept the short form `"api.example.com:443"` beside the table form."""
    if isinstance(value, str):
        host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
        if port and not port.isdigit():
            raise ValueError(f"invalid port in {value!r}")
        return {"host": host, "ports": [int(port)]} if port else {"host": value}
    return value


Host = Annotated[HostRule, BeforeValidator(_host_rule)]


def _at_most_a_day(seconds: float) -> float:
    if seconds > 24 * 3600:
        raise ValueError("must be at most 24h")
    return seconds


class Route(Strict):
    """A plain-HTTP base URL inside the container that the proxy forwards upstream,
    adding the credential from the keyring. With `intercept`, the agent uses the real
    HTTPS URL instead, with a placeholder for the key that the proxy swaps for the real one
    (in the `header`, or in the `query` parameter) on the way to that host only."""

    name: Name
    upstream: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    secret: Name
    header: SafeText = "Authorization: Bearer {secret}"
    intercept: bool = False
    query: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    # The variable the agent reads its key from, set to the placeholder.
    placeholder_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] | None = None
    # Silence from the upstream, while the agent waits for its answer or between streamed
    # events, before the agent gets 504: generous, since a reasoning model thinks for minutes.
    idle_timeout: Annotated[Duration, AfterValidator(_at_most_a_day)] = 600.0

    @model_validator(mode="after")
    def _intercepted(self) -> Route:
        if (self.query or self.placeholder_env) and not self.intercept:
            raise ValueError("query and placeholder_env need intercept = true")
        if self.intercept and not self.upstream.startswith("https://"):
            raise ValueError("an intercepted route's upstream must be https://")
        if self.placeholder_env in RESERVED_ENV:
            raise ValueError(f"{self.placeholder_env} is set by Airlock itself")
        return self

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        name, sep, template = value.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name) or "{secret}" not in template:
            raise ValueError("must look like 'Header-Name: ... {secret} ...'")
        return value


class Network(Strict):
    allow: tuple[Host, ...] = ()
    ask: tuple[Host, ...] = ()
    routes: tuple[Route, ...] = ()
    inspect: bool = False  # decrypt HTTPS to every host whose rule does not say
    allow_private: bool = False  # private, loopback and link-local destinations
    max_connections: int = Field(default=32, ge=1, le=4096)  # open upstream connections
    bandwidth: Size | None = None  # bytes per second, both directions together

    @model_validator(mode="after")
    def _unique_routes(self) -> Network:
        names = [route.name for route in self.routes]
        if len(names) != len(set(names)):
            raise ValueError("route names must be unique")
        return self


def _rule_path(value: str) -> str:
    if not value or "\0" in value or not (value.startswith("/") or value.startswith("~/")):
        raise ValueError(f"{value!r} must be absolute or start with ~/")
    if ".." in Path(value).parts:
        raise ValueError(f"{value!r} must not contain '..'")
    return value.rstrip("/") or "/"


RulePath = Annotated[str, AfterValidator(_rule_path)]


class Approval(Strict):
    commit: Literal["ask", "auto"] = "ask"
    # Folders the agent may open (as a whole, read-only) or save into through the portal
    # without asking: for scripted agents with a folder set aside for them.
    read: tuple[RulePath, ...] = ()
    write: tuple[RulePath, ...] = ()
    uploads: Literal["ask", "always", "never"] = "ask"
    upload_threshold: Size = 64 * 1024
    timeout: Duration = 120.0


class Home(Strict):
    """The agent's writable HOME: a fresh one per session, or kept per profile (`persist`)
    in Airlock's state directory, from one session to the next."""

    persist: bool = False
    size: Size = 256 * 1024**2


class Watch(Strict):
    # What to do with a session whose file activity overflowed the watch again and again
    # (see app/activity.py): show it as partly unwatched, or also stop it.
    unwatched: Literal["warn", "stop"] = "warn"


class Sandbox(Strict):
    # Differences from the asked-for sandbox the engine may make and the session still run,
    # with a warning (app/weaker.py): off by default, and never what keeps the agent in.
    accept_weaker: tuple[Annotated[str, AfterValidator(accepted_name)], ...] = ()

    @field_validator("accept_weaker")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("names a difference twice")
        return value


class DefaultGrant(Strict):
    path: str
    mode: Literal["ro", "rw"] = "ro"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("must be a non-empty path")
        if not (value.startswith("/") or value.startswith("~")):
            raise ValueError("must be absolute or start with ~")
        return value

    def resolved(self, home: Path) -> Path:
        return Path(str(home) + self.path[1:]) if self.path.startswith("~") else Path(self.path)


class Profile(Strict):
    name: Name
    description: SafeText = ""
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")]
    image_digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    seccomp: str = "airlock-default"
    runtime: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")] | None = None
    timeout: Duration | None = None
    resources: Resources = Field(default_factory=Resources)
    network: Network = Field(default_factory=Network)
    approval: Approval = Field(default_factory=Approval)
    home: Home = Field(default_factory=Home)
    watch: Watch = Field(default_factory=Watch)
    sandbox: Sandbox = Field(default_factory=Sandbox)
    grants: tuple[DefaultGrant, ...] = ()
    # What the desktop app's Launch dialog proposes for each file or folder added: "rw" for
    # an agent whose job is to write (its writes are staged for review either way).
    grant_mode: str = "ro"

    @field_validator("grant_mode")
    @classmethod
    def _grant_mode(cls, value: str) -> str:
        if value not in ("ro", "rw"):
            raise ValueError(
                f"must be 'ro' (read-only) or 'rw' (read-write, its writes staged for "
                f"your review), not {value!r}"
            )
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any("\0" in part for part in value):
            raise ValueError("must not contain NUL bytes")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"invalid variable name {key!r}")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} is set by Airlock and cannot be overridden")
            if "\0" in item:
                raise ValueError(f"{key} must not contain NUL bytes")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\0" in value):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("seccomp")
    @classmethod
    def _seccomp(cls, value: str) -> str:
        if value in ("unconfined", ""):
            raise ValueError("a profile cannot turn seccomp off")
        return value


def _format_location(location: tuple[int | str, ...]) -> str:
    key = ""
    for part in location:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def _first_error(error: ValidationError) -> tuple[str, str]:
    detail = error.errors()[0]
    location = tuple(
        part
        for part in detail["loc"]
        if not (isinstance(part, str) and part.startswith("function-"))
    )
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    elif detail["type"] == "missing":
        message = "required key is missing"
    elif detail["type"] == "string_pattern_mismatch" and location and location[-1] == "name":
        message = "must be lower-case letters, digits, '.', '_' or '-' (at most 63)"
    return _format_location(location), message


def parse_profile(text: str, source: str) -> Profile:
    """Parse and validate profile text; `source` names it in errors."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: not valid TOML: {e}") from e
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        key, message = _first_error(e)
        raise ProfileError(f"{source}: {key}: {message}") from e


def load_profile_file(path: Path) -> Profile:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from e
    if len(raw) > 1024 * 1024:
        raise ProfileError(f"{path}: larger than 1 MiB; that is not a profile")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path}: not UTF-8 text (byte {e.start})") from e
    return parse_profile(text, str(path))


def shipped_profiles_dir() -> Path:
    return Path(str(resources.files("profiles")))


class ProfileCatalog:
    """Finds profiles by shipped name, the user's own name, or a path."""

    def __init__(self, user_dir: Path, shipped_dir: Path | None = None) -> None:
        self.user_dir = user_dir
        self.shipped_dir = shipped_dir or shipped_profiles_dir()

    def find(self, reference: str) -> Path:
        if "/" in reference or reference.endswith(".toml"):
            path = Path(reference).expanduser()
            if not path.is_file():
                raise ProfileError(f"{reference}: no such profile file")
            return path
        if not re.fullmatch(NAME_PATTERN, reference):
            raise ProfileError(f"{reference!r} is not a profile name or a path")
        for directory in (self.user_dir, self.shipped_dir):
            candidate = directory / f"{reference}.toml"
            if candidate.is_file():
                return candidate
        names = ", ".join(sorted(name for name, _ in self.available())) or "none"
        raise ProfileError(f"no profile named {reference!r} (available: {names})")

    def load(self, reference: str) -> Profile:
        return load_profile_file(self.find(reference))

    def available(self) -> Iterator[tuple[str, Path]]:
        """(name, path) of every profile; the user's own shadow shipped ones."""
        seen: set[str] = set()
        for directory in (self.user_dir, self.shipped_dir):
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.toml")):
                if path.stem not in seen:
                    seen.add(path.stem)
                    yield path.stem, path

    def seccomp_path(self, profile: Profile, profile_path: Path) -> Path:
        """A seccomp reference is a shipped name or a path relative to the profile."""
        if "/" in profile.seccomp or profile.seccomp.endswith(".json"):
            path = (profile_path.parent / profile.seccomp).resolve()
        else:
            path = self.shipped_dir / "seccomp" / f"{profile.seccomp}.json"
        if not path.is_file():
            raise ProfileError(f"{profile_path}: seccomp: no seccomp profile at {path}")
        return path
