"""`airlock daemon` under many agents (shared by the CI test and the benchmark): `airlock run`
hand-offs from the command line, a first batch in parallel and more while they run, each agent
asking a question that waits for `airlock ask`, some containers killed from outside. Returns
what it measured (tests/loadfigures.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import docker

from tests.loadfigures import (
    ASK_THEN_RUN,
    LAUNCH_TIMEOUT,
    Figures,
    Launch,
    all_removed,
    kill_agent,
    until,
)
from tests.support import AIRLOCK, DesktopUser, profile_text

LIVE = ("starting", "running")
STARTED = re.compile(r"airlock: session ([0-9a-f]{8}) started")


class Client:
    """One `airlock run` handing its session to the daemon, its stderr read as it comes."""

    def __init__(self, launch: Launch, process: asyncio.subprocess.Process) -> None:
        self.launch = launch
        self.process = process
        self.stderr: list[str] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr.append(line)
            found = STARTED.search(line)
            if found and self.launch.started is None:
                self.launch.session = found.group(1)
                self.launch.started = time.monotonic()
        code = await self.process.wait()
        if self.launch.started is None and not self.launch.failed:
            self.launch.failed = f"exit {code}: {' / '.join(self.stderr[-2:])}"
        if self.launch.ended is None:
            self.launch.ended = time.monotonic()

    def stop(self) -> None:
        # A session of its own: runuser and the command behind it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)


async def airlock(tester: DesktopUser, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command(tester, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tester.base,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def command(tester: DesktopUser, *args: str) -> list[str]:
    env = [f"{k}={v}" for k, v in tester.env.items()]
    return [*tester.prefix, "env", "-i", *env, str(AIRLOCK), *args]


async def start_daemon(tester: DesktopUser) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *command(tester, "daemon"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tester.base,
        start_new_session=True,
    )
    sock = Path(tester.env["XDG_RUNTIME_DIR"]) / "airlock" / "supervisor.sock"
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert process.returncode is None and time.monotonic() < deadline, "no daemon"
        await asyncio.sleep(0.05)
    return process


async def daemon_load(
    tester: DesktopUser,
    engine: docker.DockerClient,
    image: str,
    first: int,
    more: int,
    killed: int,
) -> Figures:
    figures = Figures(f"airlock daemon, {first} + {more} `airlock run` hand-offs")
    profile = tester.write(
        "asker.toml", profile_text(image, ["sh", "-c", ASK_THEN_RUN], memory="64m", pids=32)
    )
    daemon = await start_daemon(tester)
    clients: list[Client] = []

    async def launch_one() -> None:
        launch = figures.launch(time.monotonic())
        process = await asyncio.create_subprocess_exec(
            *command(tester, "run", "-p", str(profile), "-T", "--ask", "tty", "--review", "never"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=tester.base,
            start_new_session=True,
        )
        clients.append(Client(launch, process))

    def resolved(batch: int) -> bool:
        assert not figures.unresolved(time.monotonic()), "a launch neither started nor failed"
        return all(x.started is not None or x.failed for x in figures.launches[:batch])

    async def asked() -> set[str]:
        code, out, err = await airlock(tester, "ask", "--json")
        assert code == 0, err
        return {str(r["session"]) for r in json.loads(out)}

    async def records() -> dict[str, dict[str, object]]:
        code, out, err = await airlock(tester, "sessions", "--all", "--json")
        assert code == 0, err
        return {str(r["id"]): r for r in json.loads(out)}

    async def note_questions() -> None:
        """`airlock ask` polled from the first launch on: when each question was listed."""
        while True:
            seen = await asked()
            now = time.monotonic()
            for x in figures.launches:
                if x.session in seen and x.question_shown is None:
                    x.question_shown = now
            await asyncio.sleep(0.2)

    poller = asyncio.get_running_loop().create_task(note_questions())
    try:
        await asyncio.gather(*(launch_one() for _ in range(first)))
        await until(lambda: resolved(first), LAUNCH_TIMEOUT + 5, "the first batch")
        await asyncio.gather(*(launch_one() for _ in range(more)))
        await until(lambda: resolved(first + more), LAUNCH_TIMEOUT + 5, "the second batch")
        running = figures.started
        sessions = {x.session for x in running}

        await until(
            lambda: all(x.question_shown is not None for x in running),
            120,
            "every question listed by `airlock ask`",
        )
        poller.cancel()
        victims = running[:: max(1, len(running) // killed)][:killed]
        for victim in victims:
            victim.killed = time.monotonic()
            await kill_agent(engine, victim.session)
        # The killed sessions' callers hear the end (their `airlock run` exits), the list
        # shows them ended, and their questions are gone.
        ended = [c for c in clients if c.launch in victims]
        await until(lambda: all(c.reader.done() for c in ended), 60, "the callers to end")
        for client in ended:
            assert client.process.returncode != 0, client.stderr
        listed = await records()
        assert all(listed[v.session]["state"] not in LIVE for v in victims), listed
        assert all(listed[x.session]["state"] in LIVE for x in running if x not in victims)
        others = sessions - {v.session for v in victims}

        async def withdrawn() -> bool:
            return await asked() == others

        await until(withdrawn, 30, "the killed sessions' questions withdrawn")
        return figures
    finally:
        poller.cancel()
        for client in clients:
            client.stop()
        await asyncio.gather(*(c.reader for c in clients), return_exceptions=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 60)
        sessions = [x.session for x in figures.launches if x.session]
        await until(lambda: all_removed(engine, sessions), 60, "every container removed")
