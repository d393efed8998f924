"""What the Launch dialog says and decides (ui/launch_plan.py), by tables: a profile's powers
in words, why Launch is off, how far a launch got, what to do after a failure, and the last
choice as it is remembered (read back safely from a hand-edited settings file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import (
    AirlockError,
    EngineError,
    GrantError,
    ImageError,
    ProfileError,
    SandboxRefused,
)
from app.grants import Mode
from app.profiles import ProfileCatalog, parse_profile
from ui.launch_plan import (
    SANDBOX_VERIFIED,
    STAGES,
    LaunchChoice,
    default_mode,
    human_duration,
    human_size,
    next_step,
    powers,
    refusal,
    stage_of,
)

BASE = 'name = "p"\nimage = "airlock-agent:bookworm"\n'

POWERS = [
    # (profile text, row title, the row's text)
    (BASE, "Network", "None: it has no network at all"),
    (
        BASE + '[network]\nallow = ["pypi.org:443", "*.example.com:80"]\n',
        "Network",
        "May reach pypi.org, *.example.com:80\nAny other host is refused",
    ),
    (
        BASE + '[network]\nask = [{ host = "api.github.com", methods = ["GET"] }]\n',
        "Network",
        "Asks you first for api.github.com (GET)\nAny other host is refused",
    ),
    (
        BASE + '[[network.routes]]\nname = "openai"\nupstream = "https://api.openai.com/v1"\n'
        'secret = "openai"\n',
        "Network",
        "Uses api.openai.com/v1 with your “openai” key, which stays with Airlock\n"
        "Any other host is refused",
    ),
    (BASE, "Limits", "1 GiB memory · 1 CPU · 256 processes"),
    (
        BASE + '[resources]\nmemory = "256m"\ncpus = 0.5\npids = 64\n',
        "Limits",
        "256 MiB memory · 0.5 CPUs · 64 processes",
    ),
    (BASE, "Time limit", "None: it runs until it ends or you stop it"),
    (BASE + 'timeout = "8h"\n', "Time limit", "Stopped after 8 h"),
    (BASE + 'timeout = "90m"\n', "Time limit", "Stopped after 1 h 30 min"),
    (BASE, "Uploads", "Nothing: it reaches no host it could upload to"),
    (
        BASE + '[network]\nallow = ["pypi.org"]\n',
        "Uploads",
        "Asks you before more than 64 KiB goes to one host, or anything that looks like a secret",
    ),
    (
        BASE + '[network]\nallow = ["pypi.org"]\n[approval]\nuploads = "always"\n',
        "Uploads",
        "Asks you before anything is uploaded",
    ),
    (
        BASE + '[network]\nallow = ["pypi.org"]\n[approval]\nuploads = "never"\n',
        "Uploads",
        "Sent without asking; only what looks like a secret (a key, an IBAN…) asks you first",
    ),
    (BASE, "Files", "Only what you pick below; while it runs it may ask you for more"),
    (
        BASE + '[approval]\nread = ["~/Notes"]\nwrite = ["~/Out"]\n'
        '[[grants]]\npath = "~/Docs"\nmode = "rw"\n',
        "Files",
        "Only what you pick below; while it runs it may ask you for more\n"
        "Also, every time: ~/Docs (read and write)\n"
        "Opens without asking, read only: ~/Notes\n"
        "Saves without asking into: ~/Out",
    ),
    (BASE, "Changes", "Every change waits for your review"),
    (
        BASE + '[approval]\ncommit = "auto"\n',
        "Changes",
        "Applied without asking (except what could run code on your computer)",
    ),
]


@pytest.mark.parametrize(("text", "title", "expected"), POWERS)
def test_what_a_profile_may_do_in_words(text: str, title: str, expected: str) -> None:
    rows = dict(powers(parse_profile(text, "p.toml")))
    assert list(rows) == ["Network", "Limits", "Time limit", "Uploads", "Files", "Changes"]
    assert rows[title] == expected


def test_every_shipped_profile_says_what_it_may_do_and_proposes_read_write() -> None:
    catalog = ProfileCatalog(Path("/nonexistent"))
    for name, _ in catalog.available():
        profile = catalog.load(name)
        rows = dict(powers(profile))
        assert all(rows.values()), name
        # Every shipped agent's job is to write (a summary, a survey, code).
        assert default_mode(profile) is Mode.READ_WRITE, name
    assert default_mode(parse_profile(BASE, "p.toml")) is Mode.READ


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (64 * 1024, "64 KiB"),
        (1536 * 1024**2, "1.5 GiB"),
        (512, "512 bytes"),
        (2 * 1024**3, "2 GiB"),
    ],
)
def test_sizes_in_words(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(600, "10 min"), (28800, "8 h"), (45, "45 s"), (3725, "1 h 2 min 5 s")]
)
def test_durations_in_words(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


REFUSALS = [
    ("", [(Path("/a"), True)], "Choose an agent first."),
    ("p", [], "Add at least one file or folder"),
    ("p", [(Path("/a"), True), (Path("/gone"), False)], "/gone does not exist: remove it"),
    ("p", [(Path("/x"), False), (Path("/y"), False)], "/x does not exist (and 1 more)"),
    ("p", [(Path("/a"), True)], ""),
]


@pytest.mark.parametrize(("profile", "paths", "expected"), REFUSALS)
def test_why_launch_is_off(profile: str, paths: list[tuple[Path, bool]], expected: str) -> None:
    why = refusal(profile, paths)
    assert why.startswith(expected) if expected else why == ""


@pytest.mark.parametrize(
    ("step", "stage"),
    [
        ("checking the image", 0),
        ("preparing the granted files", 1),
        ("creating the container", 2),
        ("starting the container", 3),
        (SANDBOX_VERIFIED, len(STAGES)),
        ("something new", -1),
    ],
)
def test_progress_steps_map_to_stages(step: str, stage: int) -> None:
    assert stage_of(step) == stage


IMAGE = 'name = "p"\nimage = "airlock-agent:claude-code"\n'


@pytest.mark.parametrize(
    ("error", "profile", "says"),
    [
        (GrantError("/x: no such file or directory"), None, "Remove that file or folder"),
        (ImageError("image missing"), BASE, "`airlock image build`, then"),
        (ImageError("image missing"), IMAGE, "`airlock image build --agent claude-code`"),
        (SandboxRefused("seccomp off"), None, "not sandboxed as asked"),
        (EngineError("cannot connect"), None, "container engine runs"),
        (ProfileError("p.toml: bad"), None, "airlock profiles check"),
        (AirlockError("disk full"), None, "Fix what it says"),
        (RuntimeError("boom"), None, "a bug in Airlock"),
    ],
)
def test_what_to_do_after_a_failed_launch(
    error: BaseException, profile: str | None, says: str
) -> None:
    parsed = parse_profile(profile, "p.toml") if profile else None
    assert says in next_step(error, parsed)


def test_the_last_choice_round_trips_and_bad_text_reads_as_none() -> None:
    choice = LaunchChoice("aider", ((Path("/src/app"), Mode.READ_WRITE), (Path("/doc"), Mode.READ)))
    assert LaunchChoice.decode(choice.encode()) == choice
    assert LaunchChoice.decode(LaunchChoice("p").encode()) == LaunchChoice("p")
    for bad in (
        "",
        "nonsense",
        "[]",
        '{"profile": 3, "paths": []}',
        '{"profile": "p", "paths": [["relative", "ro"]]}',
        '{"profile": "p", "paths": [["/a", "rwx"]]}',
        '{"profile": "p", "paths": [["/a"]]}',
        '{"profile": "p"}',
    ):
        assert LaunchChoice.decode(bad) is None, bad
