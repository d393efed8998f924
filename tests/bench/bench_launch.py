"""Launch latency: request to the agent's first output byte, against a bare `docker run` of the
same image with the same mount (and on each engine available, against that engine's own
bare `run`), median of several interleaved runs. Prints figures; asserts nothing about time."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from app.engine import detect_engine
from app.events import Event, EventKind
from app.grants import GrantRequest, Mode
from app.paths import Dirs
from app.profiles import load_profile_file
from app.sessions import LaunchRequest, Supervisor
from tests.ptyterm import PtyProcess
from tests.support import ACCEPT_LIMITS, AIRLOCK, BIN, TESTER, profile_text
from ui.wiring import open_supervisor

RUNS = 9


def first_output_seconds(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None
    first = process.stdout.read(1)
    elapsed = time.perf_counter() - started
    process.communicate()
    _, err = process.communicate() if first != b"r" else (b"", b"")
    assert first == b"r", f"{command[0]} printed {first!r}: {err.decode(errors='replace')}"
    return elapsed


class FirstOutput:
    def __init__(self) -> None:
        self.at: float | None = None

    def write(self, stream: str, data: bytes) -> None:
        if self.at is None:
            self.at = time.perf_counter()


def in_process_first_output(
    supervisor: Supervisor, request: LaunchRequest, loop: asyncio.AbstractEventLoop
) -> float:
    """What the desktop app pays: its supervisor, engine connection and loop already exist."""
    output = FirstOutput()

    async def launch() -> float:
        started = time.perf_counter()
        await supervisor.run(request, output)
        assert output.at is not None
        return output.at - started

    return loop.run_until_complete(launch())


def print_ratios(title: str, rows: list[tuple[str, float]]) -> None:
    """A table of times, each as a ratio to the first row's (the baseline of the same run)."""
    base, width = rows[0][1], max(len(label) for label, _ in rows)
    print(f"\n{title}")
    for label, seconds in rows:
        print(f"  {label:{width}} {seconds * 1000:5.0f} ms  {seconds / base:.2f}x")


@pytest.mark.bench
def test_launch_latency_against_bare_docker_run(
    tmp_path: Path, agent_image: str, engine: docker.DockerClient
) -> None:
    docker_cli = shutil.which("docker")
    assert docker_cli, "the docker command line is needed for the baseline"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("ready\n")
    profile = tmp_path / "bench.toml"
    profile.write_text(profile_text(agent_image, ["cat", "a.md"]))
    runtime = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    env = dict(
        os.environ,
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_RUNTIME_DIR=str(runtime),
    )
    bare = _bare_run([docker_cli], notes, agent_image)
    cold = [str(AIRLOCK), "run", "--in-process", "--profile", str(profile), "--grant", str(notes)]
    handed = [str(AIRLOCK), "run", "--profile", str(profile), "--grant", str(notes)]
    daemon = subprocess.Popen([str(AIRLOCK), "daemon"], env=env, stderr=subprocess.DEVNULL)
    while not (runtime / "airlock" / "supervisor.sock").exists():
        assert daemon.poll() is None, "airlock daemon did not start"
        time.sleep(0.05)
    dirs = Dirs(tmp_path / "c", tmp_path / "s", Path(tempfile.mkdtemp(prefix="airlock-w-")))
    # The same object graph the desktop app and `airlock daemon` use, on one loop.
    wired = open_supervisor(dirs, long_running=True)
    supervisor = wired.__enter__()
    loop = asyncio.new_event_loop()
    request = LaunchRequest(load_profile_file(profile), profile, (GrantRequest(notes, Mode.READ),))
    checks: list[float] = []  # the sandbox self-check of each in-process launch

    def checked(event: Event) -> None:
        if event.kind is EventKind.SANDBOX_VERIFIED:
            checks.append(float(event.details["seconds"]))

    supervisor.bus.attach(checked)
    first_output_seconds(bare)  # warm the engine's caches for all three
    first_output_seconds(cold, env)
    in_process_first_output(supervisor, request, loop)
    first_output_seconds(handed, env)
    bare_times, cold_times, handed_times, warm_times = [], [], [], []
    try:
        for _ in range(RUNS):
            bare_times.append(first_output_seconds(bare))
            cold_times.append(first_output_seconds(cold, env))
            handed_times.append(first_output_seconds(handed, env))
            warm_times.append(in_process_first_output(supervisor, request, loop))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        loop.run_until_complete(supervisor.aclose())
        loop.close()
        wired.__exit__(None, None, None)
    base = statistics.median(bare_times)
    rows = [
        ("bare docker run", base),
        ("airlock run, supervising itself", statistics.median(cold_times)),
        ("airlock run, handed to a running supervisor", statistics.median(handed_times)),
        ("in a running supervisor (library call)", statistics.median(warm_times)),
    ]
    print_ratios(f"launch to first output, median of {RUNS} runs (target <= 1.3x):", rows)
    # The check stands between the container's start and the agent's command: its whole
    # time is on the launch's path (target <= 10 % of it).
    check, warm = statistics.median(checks[1:]), statistics.median(warm_times)
    print(
        f"  {'of which the sandbox self-check':44} {check * 1000:5.1f} ms  "
        f"{check / warm:.1%} of the in-process launch, {check / base:.1%} of docker run"
    )


def first_screen_seconds(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Spawn on a terminal to the agent's first words on it."""
    started = time.perf_counter()
    terminal = PtyProcess(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command], cwd)
    try:
        terminal.expect("ready", timeout=60)
        elapsed = time.perf_counter() - started
        assert terminal.wait() == 0, terminal.tail()
    finally:
        terminal.close()
    return elapsed


@pytest.mark.bench
def test_interactive_launch_against_docker_run_it(
    tmp_path: Path, agent_image: str, engine: docker.DockerClient
) -> None:
    """The agent on a terminal: `airlock run` supervising itself (cold), and handed to the
    background supervisor the first run started (warm), against `docker run -it`."""
    docker_cli = shutil.which("docker")
    assert docker_cli, "the docker command line is needed for the baseline"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("ready\n")
    profile = tmp_path / "bench.toml"
    profile.write_text(profile_text(agent_image, ["cat", "a.md"]))
    runtime = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "TERM": "xterm-256color",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "AIRLOCK_AUTOSTART": "1",
        "AIRLOCK_IDLE_EXIT": "60",
    }
    bare = _bare_run([docker_cli], notes, agent_image, "-it")
    cold = [str(AIRLOCK), "run", "--in-process", "--profile", str(profile), "--grant", str(notes)]
    warm = [str(AIRLOCK), "run", "--profile", str(profile), "--grant", str(notes)]
    first_screen_seconds(bare, tmp_path, env)
    first_screen_seconds(cold, tmp_path, env)
    first_screen_seconds(warm, tmp_path, env)  # starts the background supervisor
    bare_times, cold_times, warm_times = [], [], []
    try:
        for _ in range(RUNS):
            bare_times.append(first_screen_seconds(bare, tmp_path, env))
            cold_times.append(first_screen_seconds(cold, tmp_path, env))
            warm_times.append(first_screen_seconds(warm, tmp_path, env))
    finally:
        subprocess.run([str(AIRLOCK), "sessions"], env=env, capture_output=True)
    base = statistics.median(bare_times)
    print_ratios(
        f"interactive launch to the agent's first output, median of {RUNS} (target <= 1.3x):",
        [
            ("docker run -it", base),
            ("airlock run on a terminal, cold (supervising itself)", statistics.median(cold_times)),
            (
                "airlock run on a terminal, warm (background supervisor)",
                statistics.median(warm_times),
            ),
        ],
    )


@pytest.mark.bench
def test_gvisor_launch_against_bare_runsc_run(
    tmp_path: Path, agent_image: str, engine: docker.DockerClient
) -> None:
    """The same launch under gVisor (`runtime = "runsc"`, registered as app/gvisor.py says)
    against a bare `docker run --runtime=runsc` of the same image and mount, with a bare
    runc run in the same rounds for scale."""
    from app.gvisor import registration_fix, registration_problem

    if (why := registration_problem(engine.info().get("Runtimes", {}))) is not None:
        pytest.fail(f"gVisor is not registered: {why}; {registration_fix()}")
    docker_cli = shutil.which("docker")
    assert docker_cli, "the docker command line is needed for the baseline"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("ready\n")
    profile = tmp_path / "bench.toml"
    profile.write_text(profile_text(agent_image, ["cat", "a.md"], extra='runtime = "runsc"'))
    env = dict(
        os.environ,
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_RUNTIME_DIR=tempfile.mkdtemp(prefix="airlock-bench-"),
    )

    def bare(runtime: str) -> list[str]:
        return _bare_run([docker_cli], notes, agent_image, f"--runtime={runtime}")

    cold = [str(AIRLOCK), "run", "--in-process", "--profile", str(profile), "--grant", str(notes)]
    dirs = Dirs(tmp_path / "c", tmp_path / "s", Path(tempfile.mkdtemp(prefix="airlock-g-")))
    wired = open_supervisor(dirs, long_running=True)
    supervisor = wired.__enter__()
    loop = asyncio.new_event_loop()
    request = LaunchRequest(load_profile_file(profile), profile, (GrantRequest(notes, Mode.READ),))
    first_output_seconds(bare("runsc"))
    first_output_seconds(cold, env)
    in_process_first_output(supervisor, request, loop)
    runs = 5
    runc_times, bare_times, cold_times, warm_times = [], [], [], []
    try:
        for _ in range(runs):
            runc_times.append(first_output_seconds(bare("runc")))
            bare_times.append(first_output_seconds(bare("runsc")))
            cold_times.append(first_output_seconds(cold, env))
            warm_times.append(in_process_first_output(supervisor, request, loop))
    finally:
        loop.run_until_complete(supervisor.aclose())
        loop.close()
        wired.__exit__(None, None, None)
    base = statistics.median(bare_times)
    rows = [
        ("bare docker run --runtime=runsc", base),
        ("airlock run under gVisor, supervising itself", statistics.median(cold_times)),
        ("under gVisor in a running supervisor", statistics.median(warm_times)),
        ("(bare docker run, runc, same rounds)", statistics.median(runc_times)),
    ]
    print_ratios(f"gVisor launch to first output, median of {runs} runs:", rows)


@dataclass(frozen=True, slots=True)
class EngineBench:
    """One engine to launch on: its own bare `run` of the image and `airlock run` against
    it, each a command line printing the granted file's first byte."""

    name: str
    bare: list[str]
    airlock: list[str]
    env: dict[str, str]


def _shared_notes(owner: int, gid: int) -> tuple[Path, Path]:
    """A notes folder and a work folder another user (the engine's) can use: the pytest
    temporary folder is root's alone."""
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-engines-"))
    notes = work / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("ready\n")
    for path in (work, notes, notes / "a.md"):
        os.chown(path, owner, gid)
    work.chmod(0o755)
    return work, notes


def _bare_run(cli: list[str], notes: Path, image: str, *options: str) -> list[str]:
    """The engine's own `run` of `image` printing the granted file: the baseline of a launch."""
    return [
        *cli,
        "run",
        *options,
        "--rm",
        "--network",
        "none",
        "--read-only",
        "-v",
        f"{notes}:{notes}:ro",
        "-w",
        str(notes),
        image,
        "cat",
        "a.md",
    ]


def docker_bench(image: str) -> EngineBench | str:
    """The machine's Docker (rootful), as root: `docker run` and `airlock run`."""
    cli = shutil.which("docker")
    if cli is None:
        return "no docker command line"
    kind = detect_engine(docker.from_env())
    work, notes = _shared_notes(os.getuid(), os.getgid())
    profile = work / "bench.toml"
    profile.write_text(profile_text(image, ["cat", "a.md"]).replace(ACCEPT_LIMITS, ""))
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"} | {
        "XDG_STATE_HOME": str(work / "state"),
        "XDG_CONFIG_HOME": str(work / "config"),
        "XDG_RUNTIME_DIR": str(work),
        "AIRLOCK_AUTOSTART": "0",
    }
    airlock = [str(AIRLOCK), "run", "--in-process", "--profile", str(profile)]
    return EngineBench(
        kind.describe(),
        _bare_run([cli], notes, image),
        [*airlock, "--grant", str(notes)],
        env,
    )


def podman_bench(image: str) -> EngineBench | str:
    """The tester's rootless Podman (`packaging/setup podman airlock-tester`), as the tester:
    `podman run` and `airlock run` against its API socket."""
    if shutil.which("podman") is None:
        return "no podman command"
    return _rootless_bench(image, "podman/podman.sock", ["podman"], "podman")


def rootless_docker_bench(image: str) -> EngineBench | str:
    """The tester's rootless Docker (`packaging/setup rootless-docker airlock-tester`), as the
    tester: `docker run` and `airlock run` against its socket."""
    if shutil.which("docker") is None:
        return "no docker command line"
    return _rootless_bench(image, "docker.sock", ["docker"], "rootless-docker")


def _rootless_bench(
    image: str, socket_in_runtime: str, cli: list[str], mode: str
) -> EngineBench | str:
    """An engine the tester runs, its socket under their /run/user/UID, as the tester."""
    try:
        account = pwd.getpwnam(TESTER) if os.getuid() == 0 else pwd.getpwuid(os.getuid())
    except KeyError:
        return f"no user {TESTER}"
    runtime = f"/run/user/{account.pw_uid}"
    socket = f"{runtime}/{socket_in_runtime}"
    if not Path(socket).exists():
        return f"no engine at {socket} (packaging/setup {mode} {account.pw_name})"
    kind = detect_engine(docker.DockerClient(base_url=f"unix://{socket}"))
    work, notes = _shared_notes(account.pw_uid, account.pw_gid)
    profile = work / "bench.toml"
    # Where the engine drops the limits, the profile accepts that, as a user would have to.
    text = profile_text(image, ["cat", "a.md"]).replace(ACCEPT_LIMITS, "")
    profile.write_text(text + ("" if kind.limits_enforced else ACCEPT_LIMITS))
    os.chown(profile, account.pw_uid, account.pw_gid)
    as_user = (["runuser", "-u", account.pw_name, "--"] if os.getuid() == 0 else []) + [
        "env",
        "-i",
        f"PATH={BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        f"HOME={account.pw_dir}",
        f"XDG_RUNTIME_DIR={runtime}",
        f"XDG_STATE_HOME={work / 'state'}",
        f"XDG_CONFIG_HOME={work / 'config'}",
        f"DOCKER_HOST=unix://{socket}",
        "AIRLOCK_AUTOSTART=0",
        "LANG=C.UTF-8",
    ]
    return EngineBench(
        kind.describe(),
        _bare_run([*as_user, *cli], notes, image),
        [
            *as_user,
            str(AIRLOCK),
            "run",
            "--in-process",
            "--profile",
            str(profile),
            "--grant",
            str(notes),
        ],
        {},
    )


# Each engine this machine may have; a function returns why not when it is not there. (The
# gVisor bench adds its variant here.)
ENGINES: list[Callable[[str], EngineBench | str]] = [
    docker_bench,
    podman_bench,
    rootless_docker_bench,
]
ENGINE_RUNS = 5


@pytest.mark.bench
def test_launch_on_each_engine_against_its_own_bare_run(agent_image: str) -> None:
    """Launch to first output on every engine available, side by side, each against its
    own bare `run` of the same image and mount (the ratio is the engine's own overhead of
    Airlock, not one engine against another)."""
    benches: list[EngineBench] = []
    missing: list[str] = []
    for make in ENGINES:
        made = make(agent_image)
        if isinstance(made, str):
            missing.append(f"{make.__name__.removesuffix('_bench')}: {made}")
        else:
            benches.append(made)
    assert benches, "no engine to launch on: " + "; ".join(missing)
    for bench in benches:  # warm each engine's caches
        first_output_seconds(bench.bare, bench.env or None)
        first_output_seconds(bench.airlock, bench.env or None)
    times: dict[str, tuple[list[float], list[float]]] = {b.name: ([], []) for b in benches}
    for _ in range(ENGINE_RUNS):
        for bench in benches:
            times[bench.name][0].append(first_output_seconds(bench.bare, bench.env or None))
            times[bench.name][1].append(first_output_seconds(bench.airlock, bench.env or None))
    print(f"\nlaunch to first output per engine, median of {ENGINE_RUNS} interleaved runs:")
    print(f"  {'engine':44} {'its own run':>11} {'airlock run':>11}  ratio")
    for name, (bare, airlock) in times.items():
        base, ours = statistics.median(bare), statistics.median(airlock)
        print(f"  {name:44} {base * 1000:8.0f} ms {ours * 1000:8.0f} ms  {ours / base:.2f}x")
    for line in missing:
        print(f"  not measured: {line}")
