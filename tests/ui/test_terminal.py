"""The filter between the agent's output and the terminal, and the reset before Airlock
speaks: tables of bytes in, bytes out."""

from __future__ import annotations

import io
import random
import time

import pytest

from ui.terminal import (
    MAX_STRING,
    Colours,
    OutputFilter,
    TerminalFilter,
    reclaim,
    restore_sequence,
    sanitised_sgr,
)

E = b"\x1b"

KEPT_AS_IS = [
    b"plain text\n",
    b"tabs\tand\r\ncrlf\n",
    b"progress 10%\rprogress 20%\r",  # a carriage return rewrites the agent's own line only
    "accents é, dashes —, CJK 日本語, emoji \U0001f600\n".encode(),
    E + b"[31mred" + E + b"[0m",
    E + b"[1;4;32mbold underlined green" + E + b"[0m",
    E + b"[38;5;208morange" + E + b"[39m",
    E + b"[38;2;10;200;30mrgb" + E + b"[49m",
    E + b"[7minverse" + E + b"[27m",
    E + b"[97;44mwhite on blue",
]


@pytest.mark.parametrize("data", KEPT_AS_IS)
def test_text_and_plain_colour_pass_unchanged(data: bytes) -> None:
    assert OutputFilter().feed(data) == data


DROPPED = [
    # (what the agent sends, what reaches the terminal)
    (E + b"[8mconcealed", b"concealed"),  # conceal
    (E + b"[1;8;31mx", E + b"[1;31mx"),  # conceal dropped, the rest kept
    (E + b"[30;40mblack on black", b"black on black"),
    (E + b"[37;47mx", b"x"),
    (E + b"[38;5;0;48;5;16mx", b"x"),  # palette black and cube black
    (E + b"[38;2;0;0;0;48;2;0;0;1mx", b"x"),  # nearly the same
    (E + b"[38:2::5:5:5;48:2::5:5:5mx", b"x"),  # ITU form too
    (E + b"[2A" + E + b"[Jerased", b"erased"),  # cursor up, erase below
    (E + b"[H" + E + b"[2J" + E + b"[K" + E + b"[1K", b""),
    (E + b"[10;20Hx" + E + b"[5Cy" + E + b"[3Dz" + E + b"[2Gw", b"xyzw"),
    (E + b"7" + E + b"8" + E + b"M" + E + b"D" + E + b"E" + E + b"c", b""),  # save, RI, RIS
    (E + b"[5;10r" + E + b"[?6h", b""),  # scroll region, origin mode
    (E + b"[?1049h" + E + b"[?47h" + E + b"[?25l" + E + b"[?7l", b""),  # modes
    (E + b"[4h" + E + b"[3@" + E + b"[2L" + E + b"[2M" + E + b"[3S" + E + b"[3T", b""),
    (E + b"]0;a title\x07after", b"after"),  # OSC ended by BEL
    (E + b"]8;;http://evil/" + E + b"\\link" + E + b"]8;;" + E + b"\\", b"link"),
    (E + b"]52;c;Y3VybCBldmlsIHwgc2g=\x07", b""),  # clipboard write
    (E + b"Pq#0;2;0;0;0#0~~" + E + b"\\", b""),  # DCS (sixel)
    (E + b"_apc" + E + b"\\" + E + b"^pm" + E + b"\\" + E + b"Xsos" + E + b"\\", b""),
    (E + b"(0lqk" + E + b"(B", b"lqk"),  # line-drawing charset
    (b"\x0eshifted\x0f", b"shifted"),  # SO/SI
    (b"back\x08\x08\x08\x08fake", b"backfake"),  # backspace
    (b"bell\x07 vt\x0b ff\x0c del\x7f nul\x00", b"bell vt ff del nul"),
    ("c1\u009b2A\u009d0;t\u009c".encode(), b"c12A0;t"),  # C1 controls as UTF-8
    (b"bad \xff\xfe utf8 \xc0\xaf", "bad \ufffd\ufffd utf8 \ufffd\ufffd".encode()),
    (b"\x9b2A", "\ufffd2A".encode()),  # a raw 8-bit CSI is not text
    (E + b"[5;6;10;11;20;26;51;60;73mx", b"x"),  # blink, fonts, framing, ideograms
    (E + b"[58;5;3;4mx", E + b"[4mx"),  # underline colour and its arguments dropped
    (E + b"[4:3mx", E + b"[4mx"),
    (E + b"[38;5mx", b"x"),  # malformed: dropped whole
    (E + b"[1;xmx", b"mx"),  # not a CSI any more at "x": dropped up to it
    (E + b"[?1;2mx", b"x"),  # private SGR-like
    (E + b"[1 mx", b"x"),  # with an intermediate: not SGR
    (E + b"[1\x9bmx", "\ufffdmx".encode()),
]


@pytest.mark.parametrize(("data", "shown"), DROPPED)
def test_what_hides_or_rewrites_text_is_dropped(data: bytes, shown: bytes) -> None:
    assert OutputFilter().feed(data) == shown


def test_same_colours_set_one_at_a_time_and_by_two_streams() -> None:
    terminal = TerminalFilter()
    assert terminal.feed("stdout", E + b"[30m") == E + b"[30m"
    assert terminal.feed("stderr", E + b"[40mhidden?") == b"hidden?"  # stays readable
    assert terminal.feed("stdout", E + b"[41mred bg") == E + b"[41mred bg"
    assert terminal.feed("stdout", E + b"[0;31m") == E + b"[0;31m"  # 31 on default


def test_split_anywhere_gives_the_same_as_whole() -> None:
    data = b"".join(KEPT_AS_IS) + b"".join(d for d, _ in DROPPED)
    whole = OutputFilter().feed(data)
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        filtered = OutputFilter()
        assert b"".join(filtered.feed(p) for p in pieces) + filtered.end() == whole
    byte_by_byte = OutputFilter()
    assert b"".join(byte_by_byte.feed(data[i : i + 1]) for i in range(len(data))) == whole


def test_output_never_holds_a_control_but_its_own_sgr() -> None:
    rng = random.Random(11)
    alphabet = b"\x1b[];?0123456789mHJKAPX^_\\\x07\x08\r\n\t\x0e\x0f\x9b\xc2\x9d\xe2\x80\xaea"
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 200)))
        out = OutputFilter().feed(data)
        rest = out
        for sequence in (b"\x1b[",):
            while sequence in rest:
                head, _, rest = rest.partition(sequence)
                tail = rest.index(b"m")
                assert all(c in b"0123456789;" for c in rest[:tail]), out
                rest = head + rest[tail + 1 :]
        assert not any((c < 0x20 and c not in b"\t\n\r") or c == 0x7F for c in rest), out
        assert "\u009b" not in rest.decode("utf-8", "strict")


def test_state_stays_bounded_whatever_comes() -> None:
    huge_csi = OutputFilter()
    assert huge_csi.feed(E + b"[" + b"1;" * 500_000) == b""
    assert len(huge_csi._pending) == 0
    assert huge_csi.feed(b"1Avisible") == b"visible"
    endless_osc = OutputFilter()
    assert endless_osc.feed(E + b"]0;" + b"x" * (MAX_STRING // 2)) == b""
    # An unterminated string stops hiding text once it is longer than any real one.
    assert endless_osc.feed(b"x" * MAX_STRING) == b""
    assert endless_osc.feed(b"shown") == b"shown"
    escapes = OutputFilter()
    assert escapes.feed(E + b" " * 100_000) == b""
    assert escapes.feed(b"  Fok") == b"ok"


def test_an_incomplete_character_at_the_end_shows_as_a_replacement() -> None:
    filtered = OutputFilter()
    assert filtered.feed("ok \u2014".encode()[:-1]) == b"ok "
    assert filtered.end() == "\ufffd".encode()
    sequence = OutputFilter()
    assert sequence.feed(E + b"[3") == b"" and sequence.end() == b""


def test_mid_line_follows_the_text() -> None:
    filtered = OutputFilter()
    filtered.feed(b"line\n")
    assert not filtered.mid_line
    filtered.feed(b"partial" + E + b"[31m")
    assert filtered.mid_line
    filtered.feed(b"\r")
    assert filtered.mid_line  # the cursor is at column 0 of a line that holds text


@pytest.mark.parametrize(
    ("params", "written"),
    [
        (b"", b"\x1b[0m"),
        (b"0", b"\x1b[0m"),
        (b"1;31", b"\x1b[1;31m"),
        (b"38;2;300;0;0", b""),  # out of range
        (b"38;5;1000", b""),
        (b"8", b""),
        (b"99999999", b""),
    ],
)
def test_sgr_parameters(params: bytes, written: bytes) -> None:
    assert sanitised_sgr(params, Colours()) == written


class FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_reclaim_resets_the_terminal_and_starts_a_fresh_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    tty = FakeTty(True)
    reclaim(tty)
    written = tty.getvalue()
    for part in ("\x1b[?1049l", "\x1b[!p", "\x1b[r", "\x1b[0m", "\x1b[?25h", "\x1b(B", "\x0f"):
        assert part in written
    assert written.endswith("\r\n")
    assert written.index("\x1b7") < written.index("\x1b[?1049l")  # the cursor stays put
    pipe = FakeTty(False)
    reclaim(pipe)
    assert pipe.getvalue() == ""  # a file or pipe gets nothing of it
    at_start = FakeTty(True)
    reclaim(at_start, mid_line=False)
    assert at_start.getvalue().endswith("\x0f\r")


def test_no_soft_reset_where_it_would_print() -> None:
    assert "\x1b[!p" not in restore_sequence("linux")
    assert "\x1b[!p" not in restore_sequence(None)
    assert "\x1b[!p" in restore_sequence("tmux-256color")


def test_the_filter_is_fast_enough() -> None:
    # Measured on a few MB of mixed output: see README; here only a floor that a
    # byte-at-a-time parser would miss under load.
    chunk = (b"plain text line\n" + E + b"[1;31merror" + E + b"[0m: x\n") * 20_000
    filtered = OutputFilter()
    start = time.perf_counter()
    filtered.feed(chunk)
    assert len(chunk) / (time.perf_counter() - start) > 1_000_000


@pytest.mark.parametrize("hostile", ["\x1b[8m", "\u009b2J", "\u202e", "\u200f", "\n", "\u2028"])
def test_notices_are_one_line_with_what_the_agent_chose_escaped(hostile: str) -> None:
    from app.events import Event, EventKind
    from ui.notices import notice_text

    for event in (
        Event(
            EventKind.GRANT_SKIPPED, "s1", f"/home/u/x{hostile}", {"reason": f"because{hostile}"}
        ),
        Event(EventKind.GRANT_REVOKED, "s1", f"evil{hostile}.example:443"),
    ):
        text = notice_text(event)
        assert text is not None
        assert hostile not in text and f"\\u{ord(hostile[0]):04x}" in text
