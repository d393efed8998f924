"""Route credentials (app/egress/keys.py): names and values checked before anything reaches
the keyring or an HTTP header, and a real Secret Service (gnome-keyring on a private bus)
storing, listing by the index and deleting them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.egress.keys import MAX_SECRET, KeyringSecrets, check_name, check_value
from app.errors import EgressError


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("openai", True),
        ("my-key.2", True),
        ("a_b", True),
        ("OpenAI", False),
        ("", False),
        ("a b", False),
        ("../x", False),
        ("k\n", False),
    ],
)
def test_secret_names(name: str, ok: bool) -> None:
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(EgressError, match="is not a secret name"):
            check_name(name)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("sk-abc123", None),
        ("", "empty"),
        ("x" * (MAX_SECRET + 1), "longer than"),
        ("sk-abc\r\nX-Evil: 1", "control characters"),
        ("sk-abc\x7f", "control characters"),
        (" sk-abc", "starts or ends with a space"),
        ("sk-abc ", "starts or ends with a space"),
        ("sk-\u20ac", "not Latin-1"),
    ],
)
def test_secret_values_that_cannot_go_into_a_header_are_refused(
    value: str, why: str | None
) -> None:
    if why is None:
        assert check_value(value) == value
    else:
        with pytest.raises(EgressError, match=why):
            check_value(value)


def test_the_keyring_stores_lists_and_deletes_by_name(
    secret_service: Any, secret_index: Path
) -> None:
    secrets = KeyringSecrets(secret_index)
    assert secrets.names() == [] and secrets.get("keys-test") is None
    secrets.set("keys-test", "sk-one")
    secrets.set("keys-test-2", "sk-two")
    assert secrets.get("keys-test") == "sk-one"
    assert secrets.names() == ["keys-test", "keys-test-2"]
    assert "sk-" not in secret_index.read_text()  # the index holds names, never values
    secrets.delete("keys-test")
    assert secrets.get("keys-test") is None and secrets.names() == ["keys-test-2"]
    with pytest.raises(EgressError, match="no secret named"):
        secrets.delete("keys-test")
    with pytest.raises(EgressError, match="control characters"):
        secrets.set("keys-test", "a\nb")
    assert secrets.get("keys-test") is None
    secrets.delete("keys-test-2")
