"""`airlock secret set` on a text or SSH login, run by the unprivileged test user through the
real command line: no session bus at all (it says what to do, fails, and writes nothing), and
a real session bus with gnome-keyring installed but not running (Airlock starts it and
creates, later unlocks, the login keyring with a password typed on the terminal)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netsupport import SecretService, wait_until
from tests.ptyterm import PtyProcess
from tests.support import AIRLOCK, BIN, DesktopUser

VALUE = "sk-text-login-" + "Z9" * 16
PASSWORD = "keyring-password-1"


@pytest.fixture
def short_home(tester: DesktopUser) -> Iterator[Path]:
    # gnome-keyring's control socket lives below the runtime dir: unix socket paths are short.
    home = Path(tempfile.mkdtemp(prefix="kl-"))
    os.chown(home, tester.uid, tester.gid)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _command(tester: DesktopUser, env: dict[str, str], *args: str) -> list[str]:
    return [*tester.prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *args]


def _files_holding(value: str, *roots: Path) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and value.encode() in path.read_bytes():
                    found.append(path)
    return found


def _end_keyring_daemons(address: str) -> None:
    """Ends the gnome-keyring daemons on this bus (by pid), leaving the bus running, and
    waits until they are gone (a zombie is gone: nothing may reap it here)."""
    wanted = f"DBUS_SESSION_BUS_ADDRESS={address}".encode()
    ended = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "gnome-keyring-d" and wanted in (
                entry / "environ"
            ).read_bytes().split(b"\0"):
                os.kill(int(entry.name), 15)
                ended.append(entry)

    def running(entry: Path) -> bool:
        try:
            return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    assert ended
    assert wait_until(lambda: not any(running(e) for e in ended), 20)


def test_without_a_session_bus_it_says_what_to_do_fails_and_writes_no_file(
    tester: DesktopUser, short_home: Path
) -> None:
    env = dict(tester.env, HOME=str(short_home))
    assert not (Path(env["XDG_RUNTIME_DIR"]) / "bus").exists()
    done = subprocess.run(
        _command(tester, env, str(AIRLOCK), "secret", "set", "llm-key"),
        input=VALUE + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tester.base,
        start_new_session=True,
    )  # no terminal to ask on
    assert done.returncode != 0
    assert "no D-Bus session bus on this login" in done.stderr
    assert "sudo apt-get install dbus-user-session" in done.stderr
    assert "dbus-run-session -- $SHELL" in done.stderr
    assert "Traceback" not in done.stderr and VALUE not in done.stdout + done.stderr
    assert _files_holding(VALUE, short_home, tester.base) == []
    listed = tester.run("secret", "list", extra_env={"HOME": str(short_home)})
    assert listed.returncode == 0 and listed.stdout == ""


def test_a_stale_bus_address_is_named(tester: DesktopUser, short_home: Path) -> None:
    dead = short_home / "dead-bus"
    env = dict(tester.env, HOME=str(short_home), DBUS_SESSION_BUS_ADDRESS=f"unix:path={dead}")
    done = subprocess.run(
        _command(tester, env, str(AIRLOCK), "secret", "set", "llm-key"),
        input=VALUE,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tester.base,
        start_new_session=True,
    )
    assert done.returncode != 0
    assert f"the session bus unix:path={dead} does not answer" in done.stderr
    assert _files_holding(VALUE, short_home, tester.base) == []


def test_on_a_text_login_bus_airlock_starts_gnome_keyring_and_unlocks_it(
    tester: DesktopUser, short_home: Path
) -> None:
    service = SecretService(short_home, tester.prefix, (tester.uid, tester.gid))
    service.start(keyring=False)
    terminals: list[PtyProcess] = []
    try:
        env = dict(tester.env, **{k: v for k, v in service.env.items() if k != "PATH"})
        env.pop("GNOME_KEYRING_CONTROL", None)

        def set_on_a_terminal(name: str, value: str) -> PtyProcess:
            # The value comes in on stdin; the keyring's password is typed on the terminal.
            read, write = os.pipe()
            os.write(write, (value + "\n").encode())
            os.close(write)
            term = PtyProcess(
                _command(tester, env, str(AIRLOCK), "secret", "set", name), tester.base, stdin=read
            )
            os.close(read)
            terminals.append(term)
            return term

        first = set_on_a_terminal("llm-key", VALUE)
        first.expect("no login keyring yet; starting gnome-keyring on this login's bus")
        first.expect("password to create your login keyring: ")
        first.send(PASSWORD + "\r")
        first.expect("stored secret llm-key in the keyring")
        assert first.wait() == 0
        assert VALUE not in first.seen.decode(errors="replace")
        assert PASSWORD not in first.seen.decode(errors="replace")  # not echoed

        read = subprocess.run(
            _command(
                tester,
                env,
                str(BIN / "python"),
                "-c",
                "import keyring; print(keyring.get_password('airlock', 'llm-key'))",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tester.base,
        )
        assert read.stdout.strip() == VALUE, read.stderr

        # Unlocked now: the next command just uses it.
        second = subprocess.run(
            _command(tester, env, str(AIRLOCK), "secret", "set", "other-key"),
            input="v-2",
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tester.base,
            start_new_session=True,
        )
        assert second.returncode == 0, second.stderr
        assert "password" not in second.stderr

        # gnome-keyring gone: D-Bus activation starts one that holds the keyring locked.
        _end_keyring_daemons(service.env["DBUS_SESSION_BUS_ADDRESS"])
        wrong = set_on_a_terminal("llm-key", VALUE)
        wrong.expect("login keyring is locked")
        wrong.expect("password to unlock your login keyring: ")
        wrong.send("not-the-password\r")
        wrong.expect("still locked")
        assert wrong.wait() != 0
        right = set_on_a_terminal("llm-key", VALUE + "-new")
        right.expect("password to unlock your login keyring: ")
        right.send(PASSWORD + "\r")
        right.expect("stored secret llm-key in the keyring")
        assert right.wait() == 0

        # Only gnome-keyring's encrypted keyring holds the secrets: no plaintext file.
        assert _files_holding(VALUE, short_home, tester.base) == []
        assert _files_holding("v-2", short_home / "data") == []
        assert (short_home / "data" / "keyrings" / "login.keyring").is_file()
    finally:
        for term in terminals:
            term.close()
        service.stop()


def test_a_backend_that_would_not_keep_the_secret_is_refused_even_beside_a_keyring(
    tester: DesktopUser, short_home: Path
) -> None:
    service = SecretService(short_home, tester.prefix, (tester.uid, tester.gid)).start()
    try:
        env = dict(
            tester.env,
            **{k: v for k, v in service.env.items() if k != "PATH"},
            PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        )
        done = subprocess.run(
            _command(tester, env, str(AIRLOCK), "secret", "set", "llm-key"),
            input=VALUE,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tester.base,
            start_new_session=True,
        )
        assert done.returncode != 0
        assert "the keyring is turned off (the null backend)" in done.stderr
        assert "PYTHON_KEYRING_BACKEND" in done.stderr
        assert _files_holding(VALUE, short_home, tester.base) == []
    finally:
        service.stop()
