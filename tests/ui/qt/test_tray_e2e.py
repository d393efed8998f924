"""The desktop app end to end, on a real X server (Xvfb) with a real tray host (trayer) and a real
session bus: the icon appears, its menu opens on a click, a consent dialog for a real portal
request from an agent container is answered with the keyboard, `airlock run` hands its session
to the app, the review window comes up for staged changes, and Quit ends the app.

The same icon on a real StatusNotifierItem host (the watcher from
haskell-status-notifier-item-utils, the GTK bar from haskell-gtk-sni-tray-utils), as GNOME's
AppIndicator extension and KDE's panel host it: it registers, its icon, tooltip and status
follow the sessions and questions on the bus, its dbusmenu menu lists and does what the XEmbed
one does, and the host's own menu opens on a right click.

Screenshots land in artifacts/ (tray, tray menu, consent dialog, main window, review window,
tray-sni-*).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import DEVNULL

import pytest

from app.store import StateStore
from portal.control import call
from tests.support import DEFAULT_IMAGE
from tests.ui.qt.conftest import Display, SessionBus, need
from tests.ui.qt.sni import Host, Item, eventually

pytestmark = pytest.mark.docker

AIRLOCK = Path(sys.executable).parent / "airlock"

# The agent's side of a portal request, in sh and gdbus (as tests/portal does it): ask, wait
# for the answer (ASK_ONLY), then read the granted file (ASK).
ASK_ONLY = r"""
set -u
gdbus monitor --session --dest org.freedesktop.portal.Desktop >/tmp/monitor 2>&1 &
n=0
until grep -q 'is owned by' /tmp/monitor; do
  n=$((n+1)); [ $n -lt 400 ] || { echo "no portal"; exit 3; }; sleep 0.02
done
gdbus call --session --dest org.freedesktop.portal.Desktop \
  --object-path /org/freedesktop/portal/desktop \
  --method org.freedesktop.portal.FileChooser.OpenFile "" "Pick the notes to summarise" \
  "{'handle_token': <'t1'>}" >/dev/null || exit 4
n=0
until grep -q "/t1: org.freedesktop.portal.Request.Response" /tmp/monitor; do
  n=$((n+1)); [ $n -lt 6000 ] || { echo "no response"; exit 5; }; sleep 0.02
done
"""
ASK = (
    ASK_ONLY
    + r"""
line=$(grep "/t1: org.freedesktop.portal.Request.Response" /tmp/monitor)
uri=$(echo "$line" | sed -n "s/.*'uris': <\['\([^']*\)'.*/\1/p")
path=$(python3 -c 'import sys, urllib.parse as u
print(u.unquote(u.urlparse(sys.argv[1]).path))' "$uri")
grep -q PORTAL-CANARY "$path" || exit 6
"""
)


def profile(name: str, command: list[str], description: str) -> str:
    argv = ", ".join(
        '"' + part.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        for part in command
    )
    return (
        f'name = "{name}"\ndescription = "{description}"\nimage = "{DEFAULT_IMAGE}"\n'
        f'command = [{argv}]\ntimeout = "3m"\n[resources]\nmemory = "256m"\ncpus = 1.0\n'
        'pids = 64\ntmpfs = "16m"\nstaging = "64m"\n'
    )


class X:
    """xdotool and ImageMagick on the test's display."""

    def __init__(self, display: str) -> None:
        self.env = dict(os.environ, DISPLAY=display)
        self.xdotool = need("xdotool", "xdotool")
        self.importer = need("import", "imagemagick")
        self.converter = need("convert", "imagemagick")

    def do(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [self.xdotool, *args], env=self.env, capture_output=True, text=True, timeout=20
        )
        if check and result.returncode != 0:
            raise AssertionError(f"xdotool {' '.join(args)}: {result.stderr}")
        return result.stdout

    def windows(self, *search: str) -> list[str]:
        return self.do("search", "--onlyvisible", *search, check=False).split()

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        out = self.do("getwindowgeometry", "--shell", window)
        values = dict(line.split("=", 1) for line in out.split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def wait_window(
        self, *search: str, timeout: float = 60, accept: Callable[[str], bool] = lambda w: True
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for window in self.windows(*search):
                if accept(window):
                    return window
            time.sleep(0.2)
        raise AssertionError(f"no window {search} within {timeout} s")

    def shot(
        self,
        target: Path,
        window: str = "root",
        crop: tuple[int, int, int, int] | None = None,
        zoom: int = 1,
    ) -> Path:
        if window != "root":  # no window manager here: bring it above the others
            self.do("windowraise", window)
            time.sleep(0.3)
        subprocess.run(
            [self.importer, "-window", window, str(target)], env=self.env, check=True, timeout=30
        )
        if crop is not None:
            x, y, w, h = crop
            subprocess.run(
                [
                    self.converter,
                    str(target),
                    "-crop",
                    f"{w}x{h}+{x}+{y}",
                    "+repage",
                    "-scale",
                    f"{zoom * 100}%",
                    str(target),
                ],
                check=True,
                timeout=30,
            )
        assert target.stat().st_size > 300
        return target

    def focus_and_keys(self, window: str, *keys: str) -> None:
        self.do("windowraise", window)
        self.do("windowfocus", "--sync", window)
        for key in keys:
            self.do("key", "--clearmodifiers", key)
            time.sleep(0.15)


@pytest.fixture
def trayer(xvfb: Display) -> Iterator[subprocess.Popen[bytes]]:
    binary = need("trayer", "trayer")
    process = subprocess.Popen(
        [
            binary,
            "--edge",
            "top",
            "--align",
            "right",
            "--widthtype",
            "pixel",
            "--width",
            "160",
            "--height",
            "30",
            "--transparent",
            "false",
            "--tint",
            "0xd9dde3",
            "--SetDockType",
            "true",
        ],
        env=dict(os.environ, DISPLAY=xvfb.name),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.8)
    assert process.poll() is None, "trayer exited"
    yield process
    process.terminate()
    process.wait(10)


@pytest.fixture
def home() -> Iterator[Path]:
    # Short: the sessions' bus sockets live under XDG_RUNTIME_DIR (108 bytes at most).
    path = Path(tempfile.mkdtemp(prefix="ale-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def app_env(xvfb: Display, session_bus: SessionBus, home: Path) -> dict[str, str]:
    return dict(
        os.environ,
        DISPLAY=xvfb.name,
        QT_QPA_PLATFORM="xcb",
        DBUS_SESSION_BUS_ADDRESS=session_bus.address,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_RUNTIME_DIR=str(home / "run"),
        AIRLOCK_READY_FILE=str(home / "ready"),
        LANG="C.UTF-8",
    )


def start_app(env: dict[str, str], home: Path) -> subprocess.Popen[str]:
    """`airlock tray`, once it says it is ready."""
    started = time.monotonic()
    app = subprocess.Popen(
        [str(AIRLOCK), "-v", "tray"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (home / "ready").exists():
        if app.poll() is not None or time.monotonic() > deadline:
            app.kill()
            raise AssertionError(f"the app did not get ready: {app.communicate()[0]}")
        time.sleep(0.1)
    print(f"start-up to ready: {time.monotonic() - started:.2f} s")
    return app


def test_tray_consent_handoff_review_and_quit(
    xvfb: Display,
    trayer: subprocess.Popen[bytes],
    session_bus: SessionBus,
    home: Path,
    artifacts: Path,
    agent_image: str,
) -> None:
    x = X(xvfb.name)
    (home / "run").mkdir(mode=0o700)
    profiles = home / "config" / "airlock" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "notes-reader.toml").write_text(
        profile("notes-reader", ["sh", "-c", ASK], "Reads the notes you pick and summarises them.")
    )
    (profiles / "notes-writer.toml").write_text(
        profile(
            "notes-writer",
            [
                "sh",
                "-c",
                'cd "$0" && printf "# Summary\\n\\n- groceries: 3 open\\n'
                '- kickoff: 2 open\\n" > summary.md && '
                'sed -i "s/oat milk/oat milk (2 l)/" groceries.md',
                str(home / "notes"),
            ],
            "Writes a summary of your notes.",
        )
    )
    # Past the first-run window (tests/ui/qt/test_welcome.py has it): this test looks at the tray.
    (home / "config" / "airlock" / "desktop.ini").write_text("[desktop]\nwelcome_seen=true\n")
    notes = home / "notes"
    notes.mkdir()
    (notes / "groceries.md").write_text("# Groceries\n\n- [ ] oat milk\n- [ ] lemons\n")
    (notes / "secret.md").write_text("PORTAL-CANARY\n")
    env = app_env(xvfb, session_bus, home)
    app = start_app(env, home)
    try:
        # The icon is in the tray host's panel.
        icon = x.wait_window(
            "--classname",
            "airlock",
            accept=lambda w: x.geometry(w)[1] < 30 and x.geometry(w)[2] < 40,
        )
        ix, iy, iw, ih = x.geometry(icon)
        x.shot(artifacts / "tray-idle.png", crop=(1280 - 170, 0, 170, 32), zoom=3)

        # Right click: the menu opens.
        before = set(x.windows("--classname", "airlock"))
        x.do("mousemove", "--sync", str(ix + iw // 2), str(iy + ih // 2), "click", "3")
        menu = x.wait_window("--classname", "airlock", timeout=10, accept=lambda w: w not in before)
        mx, my, mw, mh = x.geometry(menu)
        assert mh > 100, "the menu is too small to hold its entries"
        x.shot(artifacts / "tray-menu.png", crop=(max(0, mx - 40), 0, mw + 60, my + mh + 10))
        x.do("key", "Escape")

        async def control(
            member: str, signature: str = "", body: list[object] | None = None
        ) -> list[object]:
            from dbus_fast.aio import MessageBus

            bus = await MessageBus(bus_address=session_bus.address).connect()
            try:
                return await call(bus, member, signature, body)  # type: ignore[arg-type]
            finally:
                bus.disconnect()

        # A real portal request from an agent container, answered in the dialog.
        [session] = asyncio.run(control("Launch", "sas", ["notes-reader", []]))
        assert re.fullmatch(r"[0-9a-f]{8}", str(session))
        dialog = x.wait_window("--name", "Airlock — notes-reader", timeout=90)
        time.sleep(1.2)  # the buttons unlock
        x.shot(artifacts / "consent-dialog.png", dialog)
        x.shot(artifacts / "tray.png", crop=(1280 - 170, 0, 170, 32), zoom=3)  # needs you
        # The main window, through the control interface, while the agent waits.
        asyncio.run(control("Show"))
        window = x.wait_window(
            "--name", "^Airlock$", timeout=10, accept=lambda w: x.geometry(w)[2] > 600
        )
        time.sleep(0.6)
        x.shot(artifacts / "main-window.png", window)
        assert asyncio.run(control("PendingRequests")) == [1]
        listed = asyncio.run(control("ListSessions"))[0]
        assert (session, "notes-reader", "running") in [tuple(row) for row in listed]
        x.focus_and_keys(dialog, "alt+c")  # &Choose files…
        chooser = x.wait_window("--name", "notes-reader: Pick the notes", timeout=20)
        x.do("windowfocus", "--sync", chooser)
        time.sleep(0.5)
        x.do("type", "--delay", "5", str(notes / "secret.md"))
        x.do("key", "Return")
        time.sleep(0.8)
        x.shot(artifacts / "consent-summary.png", dialog)
        x.focus_and_keys(dialog, "Return")  # &Grant access, now the default

        store = StateStore(home / "state" / "airlock" / "state.db")

        def ended(session_id: str, timeout: float = 90) -> int | None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                record = store.session(session_id)
                if record is not None and not record.live:
                    return record.exit_code
                time.sleep(0.2)
            raise AssertionError(f"session {session_id} did not end")

        # The agent read the granted file through the path the portal returned.
        assert ended(str(session)) == 0

        # `airlock run` hands its session to the app and streams its output back.
        run = subprocess.run(
            [str(AIRLOCK), "run", "-p", "notes-writer", "-g", f"{notes}:rw", "--review", "never"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        # The app's own launches open the review window when they end; a handed-off one
        # leaves the choice to the terminal, so open it from the control interface's list.
        writer = store.sessions()[-1].id
        review_session = asyncio.run(control("Launch", "sas", ["notes-writer", [f"{notes}:rw"]]))[0]
        review = x.wait_window("--name", f"Review changes — .*session {review_session}", timeout=90)
        time.sleep(1.0)
        x.shot(artifacts / "review-window.png", review)
        assert (notes / "summary.md").exists() is False, "nothing is committed unasked"
        assert writer

        # A left click on the icon (nothing pending) opens the main window; Alt+A shows
        # the activity feed.
        x.do("mousemove", "--sync", str(ix + iw // 2), str(iy + ih // 2), "click", "1")
        window = x.wait_window(
            "--name", "^Airlock$", timeout=10, accept=lambda w: x.geometry(w)[2] > 600
        )
        x.focus_and_keys(window, "alt+a")
        time.sleep(0.6)
        x.shot(artifacts / "main-window-activity.png", window)

        # Quit from the tray menu: the last entry. The window fills the screen (no window
        # manager here keeps the panel above it): out of the way first, as a person would.
        x.do("windowunmap", "--sync", window)
        x.do("mousemove", "--sync", str(ix + iw // 2), str(iy + ih // 2), "click", "3")
        x.wait_window(
            "--classname",
            "airlock",
            timeout=10,
            accept=lambda w: w not in before and x.geometry(w)[3] > 100,
        )
        x.do("key", "Up", "Return")
        assert app.wait(30) == 0
        store.close()
    finally:
        if app.poll() is None:
            app.terminate()
            app.wait(20)
        print(app.stdout.read() if app.stdout else "")  # type: ignore[union-attr]


@pytest.fixture
def sni_host(xvfb: Display, session_bus: SessionBus) -> Iterator[subprocess.Popen[bytes]]:
    """A real StatusNotifierItem host, as GNOME's AppIndicator extension and KDE's panel are:
    a watcher on the session bus and a GTK tray bar on the display that draws the items."""
    watcher_binary = need("status-notifier-watcher", "haskell-status-notifier-item-utils")
    tray_binary = need("gtk-sni-tray-standalone", "haskell-gtk-sni-tray-utils")
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=session_bus.address, DISPLAY=xvfb.name)
    env["NO_AT_BRIDGE"] = "1"  # GTK would start an accessibility bus on the test's bus
    watcher = subprocess.Popen([watcher_binary], env=env, stdout=DEVNULL, stderr=DEVNULL)
    tray: subprocess.Popen[bytes] | None = None

    async def until_host() -> subprocess.Popen[bytes]:
        nonlocal tray
        host = await Host.connect(session_bus.address)
        try:
            await eventually(host.watcher_up, bool, 20, "the watcher")
            tray = subprocess.Popen(
                [tray_binary, "--top", "--end", "--size", "30", "--color", "#d9dde3"],
                env=env,
                stdout=DEVNULL,
                stderr=DEVNULL,
            )
            await eventually(host.host_registered, bool, 20, "the tray to register as host")
            return tray
        finally:
            host.disconnect()

    try:
        tray = asyncio.run(until_host())
        yield tray
    finally:
        for process in (tray, watcher):
            if process is not None:
                process.terminate()
                process.wait(10)


def host_menu_quit(x: X, shot: Path) -> None:
    """Right click on the icon in the host's bar, then a click on the menu's last entry."""
    before = set(x.windows("--name", ""))
    x.do("mousemove", "--sync", str(1280 - 15), "15", "click", "3")
    menu = x.wait_window(
        "--name", "", timeout=10, accept=lambda w: w not in before and x.geometry(w)[3] > 100
    )
    mx, my, mw, mh = x.geometry(menu)
    x.shot(shot, crop=(mx - 200, 0, mw + 200, my + mh + 10))
    x.do("mousemove", "--sync", str(mx + mw // 2), str(my + mh - 14), "click", "1")


IDLE_TOOLTIP = "Airlock — no agents running"
IDLE_MENU = [
    "No agents running",
    "Launch agent…",
    "Pending requests…",
    "Block all network",
    "Revoke everything",
    "Welcome and help…",
    "Open Airlock",
    "Quit",
]


def test_tray_on_a_status_notifier_host(
    xvfb: Display,
    sni_host: subprocess.Popen[bytes],
    session_bus: SessionBus,
    home: Path,
    artifacts: Path,
    agent_image: str,
) -> None:
    """The icon registers with the watcher; what a host reads (icon, tooltip, status, menu)
    follows a session that asks a question, runs on and is stopped from the menu; the host's
    clicks (Activate, dbusmenu events) do what the XEmbed icon's do; Quit unregisters it."""
    x = X(xvfb.name)
    (home / "run").mkdir(mode=0o700)
    profiles = home / "config" / "airlock" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "notes-asker.toml").write_text(
        profile("notes-asker", ["sh", "-c", ASK_ONLY + "exec sleep 600\n"], "Asks for notes.")
    )
    app = start_app(app_env(xvfb, session_bus, home), home)
    bar = (1280 - 170, 0, 170, 32)

    async def scenario(host: Host) -> None:
        [name] = await eventually(host.items, lambda i: len(i) == 1, 20, "the item to register")
        assert await host.pid_of(name) == app.pid
        item = Item(host, name)
        assert await item.prop("Status") == "Active"
        assert await item.tooltip() == IDLE_TOOLTIP
        idle = await item.pixmap()
        assert (await item.menu()).labels() == IDLE_MENU
        await asyncio.to_thread(x.shot, artifacts / "tray-sni-idle.png", crop=bar, zoom=3)

        # "Revoke everything" with the window hidden says so in a balloon: the item asks for
        # attention (the only status Qt's item has besides Active).
        mark = time.monotonic()
        await item.click((await item.menu()).find("Revoke everything"))
        await eventually(
            lambda: item.prop("Status"), lambda s: s == "NeedsAttention", 10, "NeedsAttention"
        )
        assert ["NeedsAttention"] in host.seen(name, "NewStatus", mark)

        # A session that asks: the icon, tooltip and menu say a question waits.
        mark = time.monotonic()
        [session] = await call(host.bus, "Launch", "sas", ["notes-asker", []])  # type: ignore[arg-type]
        waiting = "Airlock — 1 agent running · 1 request waiting for you"
        await eventually(item.tooltip, lambda t: t == waiting, 90, "the question in the tooltip")
        assert host.seen(name, "NewToolTip", mark) and host.seen(name, "NewIcon", mark)
        attention = await item.pixmap()
        assert attention != idle
        menu = await item.menu()
        assert menu.find("Pending requests (1)…").enabled
        entry = menu.find(f"notes-asker  ·  {session}")
        assert entry.labels()[1:] == ["Open", "Stop", "Revoke all of its access"]
        await asyncio.to_thread(x.shot, artifacts / "tray-sni-attention.png", crop=bar, zoom=3)

        # Denied in the questions' window: the agent runs on, nothing waits.
        dialog = await asyncio.to_thread(x.wait_window, "--name", "Airlock — notes-asker")
        await asyncio.sleep(1.2)  # the buttons unlock
        await asyncio.to_thread(x.focus_and_keys, dialog, "Escape")
        running = "Airlock — 1 agent running"
        await eventually(item.tooltip, lambda t: t == running, 20, "the answer in the tooltip")
        busy = await item.pixmap()
        assert busy not in (idle, attention)
        assert (await item.menu()).find("Pending requests…").enabled is False

        # The host's left click: with nothing pending, the main window.
        await item.activate()
        main_window = await asyncio.to_thread(
            x.wait_window,
            "--name",
            "^Airlock$",
            timeout=10,
            accept=lambda w: x.geometry(w)[2] > 600,
        )

        # Stop, from the session's submenu: the session ends, the icon is idle again.
        mark = time.monotonic()
        menu = await item.menu()
        await item.click(menu.find(f"notes-asker  ·  {session}").find("Stop"))
        await eventually(item.tooltip, lambda t: t == IDLE_TOOLTIP, 60, "the stop in the tooltip")
        assert host.seen(name, "NewIcon", mark)
        assert await item.pixmap() == idle
        assert (await item.menu()).labels() == IDLE_MENU

        # A checkable entry: "Block all network" is ticked once clicked.
        await item.click((await item.menu()).find("Block all network"))
        blocked = await eventually(
            item.menu, lambda m: m.find("Block all network").toggle_state == 1, 10, "the tick"
        )
        assert blocked.find("Block all network").toggle_state == 1

        # The host's own menu (libdbusmenu drawing the item's layout) on a right click; Quit
        # there ends the app and the item leaves the watcher's list.
        # The window fills the screen, and no window manager keeps the host's bar above it.
        await asyncio.to_thread(x.do, "windowunmap", "--sync", main_window)
        await asyncio.to_thread(host_menu_quit, x, artifacts / "tray-sni-menu.png")
        await eventually(host.items, lambda i: name not in i, 30, "the item to unregister")

    async def run() -> None:
        host = await Host.connect(session_bus.address)
        try:
            await asyncio.wait_for(scenario(host), 240)
        finally:
            host.disconnect()

    try:
        asyncio.run(run())
        assert app.wait(30) == 0
    finally:
        if app.poll() is None:
            app.terminate()
            app.wait(20)
        print(app.stdout.read() if app.stdout else "")
