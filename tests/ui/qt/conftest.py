"""Fixtures for the desktop app's tests: one qasync loop per test on pytest-qt's QApplication
(offscreen), a real X server (Xvfb) and a real session bus (dbus-daemon) for the end-to-end
tests, and a real supervisor on the Docker engine.

A missing binary fails the test that needs it, saying what to install; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# Widget tests render offscreen; only the end-to-end test talks to a real X server, from a
# process of its own.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

import docker
import pytest
import qasync
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from app.events import EventBus
from app.paths import Dirs
from app.profiles import ProfileCatalog
from app.sessions import Supervisor
from app.store import StateStore
from ui.qt.settings import Settings

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "artifacts"
T = TypeVar("T")


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is missing: install the Debian package {package} "
            "(`sudo packaging/setup test` does)"
        )
    return path


@pytest.fixture
def loop(qapp: QApplication) -> Iterator[asyncio.AbstractEventLoop]:
    """The app's arrangement: one asyncio loop that is Qt's loop."""
    event_loop = qasync.QEventLoop(qapp)
    asyncio.set_event_loop(event_loop)
    yield event_loop
    event_loop.run_until_complete(asyncio.sleep(0))
    event_loop.close()
    asyncio.set_event_loop(None)


Run = Callable[[Awaitable[T]], T]


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Callable[[Awaitable[object]], object]:
    def run_it(awaitable: Awaitable[object], timeout: float = 120) -> object:
        return loop.run_until_complete(asyncio.wait_for(awaitable, timeout))

    return run_it


async def until(
    condition: Callable[[], object], timeout: float = 20, what: str = "condition"
) -> None:
    """Waits on the loop (Qt keeps painting and delivering) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(QSettings(str(tmp_path / "airlock.ini"), QSettings.Format.IniFormat))


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    result = Dirs(config=tmp_path / "config", state=tmp_path / "state", runtime=tmp_path / "run")
    result.ensure()
    return result


@pytest.fixture
def supervisor(dirs: Dirs, engine: docker.DockerClient, agent_image: str) -> Iterator[Supervisor]:
    store = StateStore(dirs.database)
    yield Supervisor(engine, store, EventBus(), dirs, ProfileCatalog(dirs.user_profiles))
    store.close()


@dataclass
class Display:
    name: str  # ":N"
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def xvfb() -> Iterator[Display]:
    """A real X server, 1280×800, for the tray and screenshots."""
    binary = need("Xvfb", "xvfb")
    read, write = os.pipe()
    process = subprocess.Popen(
        [
            binary,
            "-displayfd",
            str(write),
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        process.kill()
        pytest.fail("Xvfb did not start")
    yield Display(f":{number}", process)
    process.terminate()
    process.wait(10)


@dataclass
class SessionBus:
    address: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[SessionBus]:
    """A private, real user session bus (dbus-daemon), as a desktop login would have."""
    binary = need("dbus-daemon", "dbus-daemon")
    read, write = os.pipe()
    process = subprocess.Popen(
        [
            binary,
            "--session",
            "--nofork",
            "--nopidfile",
            f"--print-address={write}",
            f"--address=unix:path={tmp_path / 'session-bus'}",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        address = pipe.readline().strip()
    if not address:
        process.kill()
        pytest.fail("dbus-daemon did not start")
    yield SessionBus(address, process)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
