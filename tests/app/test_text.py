"""The one policy for showing agent-chosen text (app/text.py), by tables."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from app import text


def test_every_control_format_and_separator_character_of_this_python_is_unsafe() -> None:
    # The table is written out for start-up speed; it must cover what this Python knows.
    missed = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in ("Cc", "Cf", "Cs", "Zl", "Zp")
        and not text.UNSAFE.match(chr(code))
    ]
    assert not missed


def test_every_blank_but_the_space_is_unsafe() -> None:
    blanks = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Zs"]
    assert [b for b in blanks if not text.UNSAFE.match(b)] == [" "]


@pytest.mark.parametrize(
    "char",
    [
        "\x1b",
        "\x9b",
        "\u200e",
        "\u200f",
        "\u061c",
        "\u200b",
        "\u200c",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\u2028",
        "\u2029",
        "\u202e",
        "\u2066",
        "\u00a0",
        "\u3164",
        "\u115f",
        "\u2800",
        "\u00ad",
        "\U000e0041",
    ],
)
def test_hidden_characters_are_shown_as_escapes(char: str) -> None:
    shown = text.printable(f"a{char}b")
    assert char not in shown
    assert shown.startswith("a\\") and shown.endswith("b")


@pytest.mark.parametrize(
    "plain", ["résumé.txt", "日本語.md", "файл.txt", "emoji 🎉.png", "tab\tkept? no", "naïve"]
)
def test_ordinary_names_in_any_script_stay_as_they_are(plain: str) -> None:
    expected = plain.replace("\t", "\\u0009")
    assert text.printable(plain) == expected


def test_block_keeps_lines_and_tabs_and_escapes_the_rest() -> None:
    assert text.block("a\tb\nc\rd\x1b[2A") == "a\tb\nc\\u000dd\\u001b[2A"


def test_inert_keeps_one_line() -> None:
    assert text.inert("a\nb") == "a\\u000ab"


def test_quoted_text_never_starts_a_line_of_its_own() -> None:
    title = "Save notes" + " " * 200 + "airlock: pre-approved (verified)"
    lines = text.quoted(title, indent="    ", width=60).split("\n")
    assert all(line.startswith("    ") for line in lines)
    assert "airlock: pre-approved" in " ".join(lines)
    assert all(len(line) <= 60 for line in lines)


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        ("re\u0301sume\u0301.txt", "composed form"),
        ("ﬁle.txt", "compatibility"),
        ("report.txt ", "ends with a space or a dot"),
        ("report.txt.", "ends with a space or a dot"),
        (" report.txt", "starts with a space"),
        ("p\u0430ypal.txt", "mixes Cyrillic and Latin"),
        ("a\u200fb.txt", "invisible"),
    ],
)
def test_deceptive_names_are_flagged(name: str, warning: str) -> None:
    assert any(warning in w for w in text.name_warnings(name)), text.name_warnings(name)


@pytest.mark.parametrize(
    "name", ["résumé.txt", "файл.txt", "日本語 notes.md", "Makefile", "photo 2026-01-01.jpg"]
)
def test_honest_names_have_no_warning(name: str) -> None:
    assert text.name_warnings(name) == []


def test_names_that_look_the_same_in_one_folder_are_flagged_together() -> None:
    found = text.lookalikes(
        [
            "/h/r\u00e9sum\u00e9.txt",
            "/h/re\u0301sume\u0301.txt",
            "/h/other.txt",
            "/elsewhere/r\u00e9sum\u00e9.txt",
        ]
    )
    assert "/h/r\u00e9sum\u00e9.txt" in found
    assert any("looks like" in w for w in found["/h/r\u00e9sum\u00e9.txt"])
    assert "/h/other.txt" not in found
    assert "/elsewhere/r\u00e9sum\u00e9.txt" not in found


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00b", "a\u202eb", "a\x85b", "a\u200bb"])
def test_bad_names_are_refused_with_the_reason(name: str) -> None:
    assert text.bad_name(name) is not None


def test_a_plain_name_is_not_bad() -> None:
    assert text.bad_name("notes 2026.md") is None
