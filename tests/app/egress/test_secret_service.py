"""Which keyring backends Airlock uses, what it says when the keyring cannot be used, and how
it finds the login's bus (real sockets)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from keyring.backends import SecretService, fail, null
from keyring.backends.chainer import ChainerBackend

from app.egress.secret_service import (
    BusFacts,
    Collection,
    KeyringFacts,
    choose,
    find_session_bus,
    keyring_problem,
    use_login_bus,
    within,
)


def _chainer(*members: object) -> ChainerBackend:
    class Chain(ChainerBackend):
        backends = tuple(members)  # type: ignore[assignment]

    return Chain()


def test_only_backends_that_keep_secrets_safe_are_chosen() -> None:
    secret_service = SecretService.Keyring()  # type: ignore[no-untyped-call]
    assert choose(secret_service) == (secret_service, "")
    assert choose(fail.Keyring()) == (None, "no keyring backend works here")
    assert choose(null.Keyring())[1] == "the keyring is turned off (the null backend)"
    # A chainer stores in its first backend: fine when that one is safe, never past it.
    assert choose(_chainer(secret_service, null.Keyring())) == (secret_service, "")
    none, why = choose(_chainer(null.Keyring(), secret_service))
    assert none is None and "keyring.backends.null.Keyring" in why
    assert choose(_chainer())[0] is None


BUS = BusFacts("unix:path=/run/user/1000/bus", "", True)
NO_BUS = BusFacts("", "", False, "no address")
DEAD = BusFacts("unix:path=/tmp/gone", "", False, "No such file or directory")
SS = "keyring.backends.SecretService.Keyring"
FAIL = "keyring.backends.fail.Keyring"


def facts(
    bus: BusFacts = BUS,
    backend: str = SS,
    refusal: str = "",
    service: str = "",
    collection: Collection = Collection.UNLOCKED,
    daemon: bool = True,
    display: bool = False,
) -> KeyringFacts:
    return KeyringFacts(bus, backend, refusal, service, collection, daemon, display)


@pytest.mark.parametrize(
    ("given", "ready", "startable", "problem", "fix"),
    [
        (facts(), True, False, "", ""),
        (
            facts(
                bus=NO_BUS,
                backend=FAIL,
                refusal="no keyring backend works here",
                service="no session bus",
                collection=Collection.UNKNOWN,
            ),
            False,
            False,
            "no D-Bus session bus on this login",
            "dbus-run-session -- $SHELL",
        ),
        (
            facts(
                bus=DEAD,
                backend=FAIL,
                refusal="x",
                service="no session bus",
                collection=Collection.UNKNOWN,
            ),
            False,
            False,
            "the session bus unix:path=/tmp/gone does not answer",
            "unset DBUS_SESSION_BUS_ADDRESS",
        ),
        (
            facts(collection=Collection.LOCKED),
            False,
            True,
            "the login keyring is locked and nothing on this login can ask",
            "asks for the keyring's",
        ),
        (facts(collection=Collection.MISSING), False, True, "no login keyring yet", "to create it"),
        (
            facts(
                backend=FAIL,
                refusal="no keyring backend works here",
                service="neither running nor installed for D-Bus activation",
                collection=Collection.UNKNOWN,
            ),
            False,
            True,
            "no Secret Service on the session bus",
            "starts gnome-keyring",
        ),
        (
            facts(
                backend=FAIL,
                refusal="no keyring backend works here",
                service="neither",
                collection=Collection.UNKNOWN,
                daemon=False,
            ),
            False,
            False,
            "no Secret Service on the session bus",
            "sudo apt-get install gnome-keyring",
        ),
        # A desktop asks for a locked keyring's password itself.
        (
            facts(collection=Collection.LOCKED, display=True),
            True,
            False,
            "the login keyring is locked",
            "from your desktop",
        ),
        (
            facts(
                backend="keyring.backends.null.Keyring",
                refusal="the keyring is turned off (the null backend)",
                collection=Collection.UNKNOWN,
            ),
            False,
            False,
            "the keyring is turned off",
            "PYTHON_KEYRING_BACKEND",
        ),
    ],
)
def test_what_is_wrong_and_what_to_do(
    given: KeyringFacts, ready: bool, startable: bool, problem: str, fix: str
) -> None:
    assert given.ready is ready
    assert given.startable is startable
    advice = keyring_problem(given, "airlock secret set openai")
    assert problem in advice.problem
    assert fix in advice.fix


def test_the_no_bus_advice_says_what_works_for_a_later_run() -> None:
    advice = keyring_problem(
        facts(bus=NO_BUS, backend=FAIL, refusal="r", service="s", collection=Collection.UNKNOWN),
        "airlock secret set openai",
    )
    assert "dbus-user-session" in advice.fix
    assert "`airlock secret set openai` and later `airlock run`" in advice.fix
    assert "an `airlock run` outside it cannot read it" in advice.fix


def test_the_bus_is_the_variable_else_the_logins_own_socket(tmp_path: Path) -> None:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "bus"))
    listening.listen(1)
    try:
        found = find_session_bus({"XDG_RUNTIME_DIR": str(tmp_path)}, 4242424)
        assert found == BusFacts("", str(tmp_path / "bus"), True)
        assert found.address == f"unix:path={tmp_path / 'bus'}"
        environ = {"XDG_RUNTIME_DIR": str(tmp_path)}
        assert use_login_bus(environ, 4242424) == found.address
        assert environ["DBUS_SESSION_BUS_ADDRESS"] == found.address
        named = {
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path / 'gone'}",
            "XDG_RUNTIME_DIR": str(tmp_path),
        }
        stale = find_session_bus(named, 4242424)
        assert not stale.reachable and stale.error == "No such file or directory"
        assert use_login_bus(named, 4242424) == f"unix:path={tmp_path / 'gone'}"  # kept
    finally:
        listening.close()
    (tmp_path / "bus").unlink()
    assert find_session_bus({"XDG_RUNTIME_DIR": str(tmp_path)}, 4242424).address == ""


def test_a_probe_that_hangs_is_given_up_on() -> None:
    with pytest.raises(TimeoutError, match="the test service did not answer within 0 s"):
        within(0.2, lambda: time.sleep(30), "the test service")
    with pytest.raises(ValueError, match="boom"):
        within(1, lambda: int("boom"), "x")
