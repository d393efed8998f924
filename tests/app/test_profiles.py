"""Profiles: shipped ones load; broken ones are refused with file, key and reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app.errors import ProfileError
from app.profiles import ProfileCatalog, parse_duration, parse_profile, parse_size
from tests.support import AIRLOCK

GOOD = 'name = "ok"\nimage = "airlock-agent:bookworm"\n'

BROKEN = [
    ("name = \n", "not valid TOML"),
    ('image = "x"\n', "name: required key is missing"),
    ('name = "Bad Name"\nimage = "x"\n', "name: must be lower-case letters"),
    (GOOD + 'colour = "red"\n', "colour: unknown key (check the spelling)"),
    (GOOD + '[resources]\nmemory = "12q"\n', "resources.memory: invalid size '12q'"),
    (
        GOOD + "[resources]\npids = 1\n",
        "resources.pids: Input should be greater than or equal to 8",
    ),
    (GOOD + "[resources]\ncpus = -1\n", "resources.cpus: Input should be greater than 0"),
    (GOOD + 'env = { HTTP_PROXY = "http://evil" }\n', "env: HTTP_PROXY is set by Airlock"),
    (GOOD + 'env = { "1BAD" = "x" }\n', "env: invalid variable name '1BAD'"),
    (GOOD + 'seccomp = "unconfined"\n', "seccomp: a profile cannot turn seccomp off"),
    (GOOD + 'image_digest = "sha256:abc"\n', "image_digest: String should match pattern"),
    (GOOD + 'workdir = "relative"\n', "workdir: must be an absolute path"),
    (GOOD + 'timeout = "soon"\n', "timeout: invalid duration 'soon'"),
    (GOOD + '[network]\nallow = ["bad host!"]\n', "network.allow[0].host: invalid host"),
    (GOOD + '[network]\nallow = ["example.com:99999"]\n', "network.allow[0].ports: ports must be"),
    (
        GOOD + '[[network.routes]]\nname = "r"\nupstream = "ftp://x"\nsecret = "s"\n',
        "network.routes[0].upstream: String should match pattern",
    ),
    (
        GOOD + '[[network.routes]]\nname = "r"\nupstream = "https://x"\nsecret = "s"\n'
        'header = "Authorization Bearer"\n',
        "network.routes[0].header: must look like",
    ),
    (
        GOOD + '[[network.routes]]\nname = "r"\nupstream = "https://x"\nsecret = "s"\n'
        'idle_timeout = "soon"\n',
        "network.routes[0].idle_timeout: invalid duration 'soon'",
    ),
    (
        GOOD + '[[network.routes]]\nname = "r"\nupstream = "https://x"\nsecret = "s"\n'
        "idle_timeout = 0\n",
        "network.routes[0].idle_timeout: must be a positive, finite duration",
    ),
    (
        GOOD + '[[network.routes]]\nname = "r"\nupstream = "https://x"\nsecret = "s"\n'
        'idle_timeout = "25h"\n',
        "network.routes[0].idle_timeout: must be at most 24h",
    ),
    (GOOD + '[[grants]]\npath = "notes"\n', "grants[0].path: must be absolute or start with ~"),
    (
        GOOD + '[[grants]]\npath = "/x"\nmode = "rwx"\n',
        "grants[0].mode: Input should be 'ro' or 'rw'",
    ),
    (GOOD + '[approval]\ncommit = "yes"\n', "approval.commit: Input should be 'ask' or 'auto'"),
    (GOOD + 'command = "sh -c x"\n', "command: Input should be a valid tuple"),
    (GOOD + '[watch]\nunwatched = "kill"\n', "watch.unwatched: Input should be 'warn' or 'stop'"),
    (GOOD + '[watch]\nunwatch = "stop"\n', "watch.unwatch: unknown key"),
    (GOOD + 'grant_mode = "write"\n', "grant_mode: must be 'ro' (read-only) or 'rw'"),
    (GOOD + "grant_mode = true\n", "grant_mode: Input should be a valid string"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_profile_is_refused_naming_key_and_reason(text: str, expected: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, "p.toml")
    assert str(caught.value).startswith("p.toml: ")
    assert expected in str(caught.value)


def test_profiles_check_prints_one_precise_line_per_file(tmp_path: Path) -> None:
    files = []
    for index, (text, _) in enumerate(BROKEN):
        path = tmp_path / f"broken-{index}.toml"
        path.write_text(text)
        files.append(str(path))
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    files.append(str(tmp_path / "binary.toml"))
    files.append(str(tmp_path / "missing.toml"))
    result = subprocess.run(
        [str(AIRLOCK), "profiles", "check", *files],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert len(lines) == len(files), result.stdout
    for line, (_, expected) in zip(lines, BROKEN, strict=False):
        assert expected in line
    assert lines[-2].endswith("binary.toml: not UTF-8 text (byte 0)")
    assert "missing.toml: cannot read: No such file or directory" in lines[-1]
    assert "Traceback" not in result.stderr


def test_shipped_profiles_are_valid() -> None:
    catalog = ProfileCatalog(Path("/nonexistent"))
    names = {name for name, _ in catalog.available()}
    assert {"notes-organizer", "spreadsheet", "coding-agent"} <= names
    for name, path in catalog.available():
        profile = catalog.load(name)
        assert catalog.seccomp_path(profile, path).is_file()


def test_profile_reference_by_user_name_shadows_shipped(tmp_path: Path) -> None:
    (tmp_path / "notes-organizer.toml").write_text(GOOD.replace('"ok"', '"notes-organizer"'))
    catalog = ProfileCatalog(tmp_path)
    assert catalog.find("notes-organizer") == tmp_path / "notes-organizer.toml"
    assert catalog.find(str(tmp_path / "notes-organizer.toml")).is_file()
    with pytest.raises(ProfileError, match="no profile named 'nope'"):
        catalog.find("nope")
    with pytest.raises(ProfileError, match="not a profile name or a path"):
        catalog.find("Bad;Name")
    with pytest.raises(ProfileError, match="no such profile file"):
        catalog.find("../../etc/nothing-here.toml")


def test_seccomp_reference_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD + 'seccomp = "missing.json"\n')
    catalog = ProfileCatalog(tmp_path)
    with pytest.raises(ProfileError, match="seccomp: no seccomp profile at"):
        catalog.seccomp_path(catalog.load(str(path)), path)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64k", 65536), ("2g", 2 * 1024**3), ("512M", 512 * 1024**2), (100, 100), ("1.5m", 1572864)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1m", "1t", True, 0, "1 gigabyte"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), (5, 5)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0s", -1])
def test_a_duration_must_be_positive_and_finite(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        (GOOD, "warn"),
        (GOOD + '[watch]\nunwatched = "stop"\n', "stop"),
        (GOOD + '[watch]\nunwatched = "warn"\n', "warn"),
    ],
)
def test_what_a_partly_unwatched_session_means_is_the_profile_s_choice(
    text: str, policy: str
) -> None:
    assert parse_profile(text, "p.toml").watch.unwatched == policy
