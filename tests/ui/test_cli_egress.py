"""`airlock secret` against a real Secret Service and `airlock net` on a real audit log,
through the real command line run by the unprivileged test user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.audit import AuditLog
from app.events import Event, EventKind
from tests.netsupport import SecretService
from tests.support import DesktopUser, Lines, until_followed


@pytest.fixture
def tester_keyring(tester: DesktopUser) -> Iterator[dict[str, str]]:
    # A short home: gnome-keyring's control socket lives below it, and a unix socket path
    # must fit in 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="kr-"))
    os.chown(home, tester.uid, tester.gid)
    service = SecretService(home, tester.prefix, (tester.uid, tester.gid)).start()
    try:
        yield {k: v for k, v in service.env.items() if k != "PATH"}
    finally:
        service.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_secret_set_list_delete_never_takes_the_value_from_argv(
    tester: DesktopUser, tester_keyring: dict[str, str]
) -> None:
    env = dict(tester.env, **tester_keyring)
    command = [*tester.prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items())]
    stored = subprocess.run(
        [
            *command,
            str(Path(tester.env["PATH"].split(":")[0]) / "airlock"),
            "secret",
            "set",
            "llm-key",
        ],
        input="sk-test-value-123\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tester.base,
    )
    assert stored.returncode == 0, stored.stderr
    assert "sk-test-value-123" not in stored.stdout + stored.stderr
    listed = tester.run("secret", "list", extra_env=tester_keyring)
    assert listed.stdout.split() == ["llm-key"]
    read = subprocess.run(
        [
            *command,
            str(Path(tester.env["PATH"].split(":")[0]) / "python"),
            "-c",
            "import keyring; print(keyring.get_password('airlock', 'llm-key'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tester.base,
    )
    assert read.stdout.strip() == "sk-test-value-123", read.stderr
    bad = tester.run("secret", "set", "Bad Name", extra_env=tester_keyring)
    assert bad.returncode == 2 and "is not a secret name" in bad.stderr
    assert tester.run("secret", "delete", "llm-key", extra_env=tester_keyring).returncode == 0
    assert tester.run("secret", "list", extra_env=tester_keyring).stdout == ""
    again = tester.run("secret", "delete", "llm-key", extra_env=tester_keyring)
    assert again.returncode == 2 and "no secret named 'llm-key'" in again.stderr


def _net_event(session: str, host: str, kind: EventKind, up: int, down: int, **more: str) -> Event:
    return Event(
        kind,
        session,
        host,
        {
            "method": "GET",
            "host": host.split(":")[0],
            "port": 443,
            "path": "/x?k=…",
            "status": 403 if kind is EventKind.NET_REFUSED else 200,
            "bytes_up": up,
            "bytes_down": down,
            "duration": 0.002,
            "decision": "allow",
            "rule": "allow[0]",
            "reason": "r",
            **more,
        },
    )


def test_net_totals_and_live_lines(tester: DesktopUser) -> None:
    audit_dir = tester.base / ".state" / "airlock" / "audit"
    with AuditLog(audit_dir) as audit:
        audit.append(_net_event("aaaa1111", "api.example.com:443", EventKind.NET_REQUEST, 10, 2048))
        audit.append(_net_event("aaaa1111", "api.example.com:443", EventKind.NET_TUNNEL, 5, 5))
        audit.append(_net_event("bbbb2222", "evil.example:443", EventKind.NET_REFUSED, 0, 0))
    for path in [tester.base / ".state", *(tester.base / ".state").rglob("*")]:
        tester.own(path)
    totals = tester.run("net", "--totals")
    assert totals.returncode == 0, totals.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in totals.stdout.splitlines()[1:]}
    assert rows == {"api.example.com:443": ["2", "0"], "evil.example:443": ["1", "1"]}
    only = tester.run("net", "bbbb", "--totals")
    assert "api.example.com" not in only.stdout and "evil.example" in only.stdout
    live = tester.popen("net")

    def mark() -> None:
        with AuditLog(audit_dir) as audit:
            audit.append(
                _net_event(
                    "cccc3333",
                    "files.example:443",
                    EventKind.NET_REQUEST,
                    1,
                    2,
                    inspection="inspected",
                )
            )

    try:
        line = until_followed(Lines(live), mark, lambda line: "files.example" in line)
    finally:
        tester.stop(live)
    assert "files.example:443/x?k=… (inspected)" in line and "allow [allow[0]]" in line
