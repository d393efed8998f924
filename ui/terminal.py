"""Airlock's voice on a terminal the agent's output also reaches: the agent's bytes are
filtered so they cannot hide or rewrite other text, and Airlock puts the terminal back in a
known state before it speaks.

Standard library only: the thin `airlock run` (ui/handoff_client.py) imports it.

The filter keeps text (UTF-8), tabs, line feeds, carriage returns and plain colour (SGR
colours, bold, dim, italic, underline, inverse, strike-through). It drops, whole, every other
escape sequence — cursor movement, erase, scroll regions, modes (alternate screen, cursor
visibility), charset switches, OSC (titles, hyperlinks, clipboard), DCS, APC, PM and SOS
strings — and the other controls: backspace, vertical tab, form feed, bell, SO/SI, DEL and the
C1 controls (U+0080–U+009F; a terminal in UTF-8 mode can take U+009B for CSI). Invalid UTF-8
becomes U+FFFD, which is what a UTF-8 terminal would show. What it emits is well formed by
construction: text without controls, and complete SGR sequences it wrote itself; so no
disagreement between this parser and the terminal's about where a sequence ends can smuggle
anything through.

Carriage return stays: it moves the cursor to the start of the line it is on, never to an
earlier line, and Airlock's own text always starts on a fresh line and ends with a line feed
(its questions hold the agent's output until they are answered), so the agent can rewrite
only its own current line — as progress bars do. Backspace goes: a terminal with
reverse-wraparound (xterm's reverseWrap, DECSET 45) moves it onto the line above.

An SGR that conceals text (8), blinks or picks a font is reduced to its plain-colour part;
one that would leave the foreground and background the same (or nearly: black on
38;2;0;0;1) is dropped whole. The terminal's default colours are unknown, so black text on a
default black background is not caught: Airlock's own text is unaffected either way, since
`reclaim` resets the attributes before Airlock writes.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import IO

MAX_SEQUENCE = 64  # bytes of a CSI or escape kept while it is incomplete at a chunk's end
MAX_STRING = 8192  # bytes of an OSC/DCS/APC/PM/SOS string skipped before it counts as text
NEAR = 24  # RGB channels this close count as the same colour

_UTF8_MULTI = (
    rb"\xc2[\xa0-\xbf]|[\xc3-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
# Text that passes as it is: printable ASCII, \t \n \r, and valid UTF-8 but the C1 controls.
_TEXT = re.compile(rb"(?:[\t\n\r\x20-\x7e]+|" + _UTF8_MULTI + rb")+")
# A UTF-8 sequence cut short by the end of a chunk.
_UTF8_START = re.compile(
    rb"(?:[\xc2-\xdf]|\xe0[\xa0-\xbf]?|[\xe1-\xec\xee\xef][\x80-\xbf]?|\xed[\x80-\x9f]?"
    rb"|\xf0(?:[\x90-\xbf][\x80-\xbf]?)?|[\xf1-\xf3](?:[\x80-\xbf]{1,2})?"
    rb"|\xf4(?:[\x80-\x8f][\x80-\xbf]?)?)\Z"
)
_C1 = re.compile(rb"\xc2[\x80-\x9f]")
_CSI = re.compile(rb"\x1b\[([0-?]*)([ -/]*)")  # then a final byte 0x40-0x7e
_ESC = re.compile(rb"\x1b([ -/]*)")  # then a final byte 0x30-0x7e
_CSI_BODY = re.compile(rb"[0-? -/]*")
_ESC_BODY = re.compile(rb"[ -/]*")
_STRING_END = re.compile(rb"[\x07\x18\x1a\x1b]")
_STRINGS = frozenset(b"]PX^_")  # OSC, DCS, SOS, PM, APC
REPLACEMENT = "\ufffd".encode()

# SGR parameters kept as they are: reset, bold, dim, italic, underline, inverse,
# strike-through, their resets (28 is "reveal"), overline, and the 16-colour palette.
_PLAIN_SGR = frozenset(
    {
        0,
        1,
        2,
        3,
        4,
        7,
        9,
        21,
        22,
        23,
        24,
        27,
        28,
        29,
        39,
        49,
        53,
        55,
        *range(30, 38),
        *range(40, 48),
        *range(90, 98),
        *range(100, 108),
    }
)

# The xterm palette, to compare the 16 named colours with 256-colour and RGB ones.
_BASIC = (
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
)
_CUBE = (0, 95, 135, 175, 215, 255)

Colour = tuple[int, int, int, int]  # (palette index or -1, r, g, b)


def _indexed(n: int) -> Colour:
    if n < 16:
        return (n, *_BASIC[n])
    if n < 232:
        n -= 16
        return (-1, _CUBE[n // 36], _CUBE[n // 6 % 6], _CUBE[n % 6])
    grey = 8 + 10 * (n - 232)
    return (-1, grey, grey, grey)


def same_colour(a: Colour | None, b: Colour | None) -> bool:
    """Whether text in colour `a` on background `b` is unreadable (None: the default)."""
    if a is None or b is None:
        return False
    if a[0] >= 0 and a[0] == b[0]:
        return True
    return all(abs(x - y) <= NEAR for x, y in zip(a[1:], b[1:], strict=True))


class Colours:
    """The foreground and background the filtered output left the terminal in; shared by
    the streams that reach one terminal (stdout sets the colour, stderr the background)."""

    def __init__(self) -> None:
        self.fg: Colour | None = None
        self.bg: Colour | None = None

    def reset(self) -> None:
        self.fg = self.bg = None


def _number(text: bytes) -> int | None:
    if not text:
        return 0
    if not text.isdigit() or len(text) > 6:
        return None
    return int(text)


def _extended(numbers: list[int | None]) -> tuple[Colour, list[str]] | None:
    """The colour of `38;5;N` / `38;2;R;G;B` after the 38 (or 48), and its parameters."""
    if numbers[:1] == [5] and len(numbers) == 2 and numbers[1] is not None and numbers[1] < 256:
        return _indexed(numbers[1]), ["5", str(numbers[1])]
    if (
        numbers[:1] == [2]
        and len(numbers) == 4
        and all(n is not None and n < 256 for n in numbers[1:])
    ):
        rgb = [int(n or 0) for n in numbers[1:]]
        return (-1, rgb[0], rgb[1], rgb[2]), ["2", *map(str, rgb)]
    return None


def sanitised_sgr(params: bytes, colours: Colours) -> bytes:
    """The plain-colour part of one SGR's parameters, as a sequence to write; empty when
    nothing is left or it would make text unreadable (the colours are then unchanged)."""
    if len(params) > MAX_SEQUENCE:
        return b""
    written, colours.fg, colours.bg = _sgr(params, colours.fg, colours.bg)
    return written


@functools.lru_cache(maxsize=512)  # coloured output repeats a few sequences over and over
def _sgr(
    params: bytes, fg: Colour | None, bg: Colour | None
) -> tuple[bytes, Colour | None, Colour | None]:
    before = fg, bg
    kept: list[str] = []
    tokens = params.split(b";")
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if b":" in token:  # ITU sub-parameters: 38:2::R:G:B, 4:3 (curly underline)
            parts = token.split(b":")
            head = _number(parts[0])
            if head in (38, 48):
                rest = [_number(p) for p in parts[1:]]
                if rest[:1] == [2] and len(rest) == 5:
                    rest = [2, *rest[2:]]  # the colour-space id
                colour = _extended(rest)
                if colour is None:
                    return b"", *before
                fg, bg = (colour[0], bg) if head == 38 else (fg, colour[0])
                kept += [str(head), *colour[1]]
            elif head == 4:
                kept.append("4")
            continue
        number = _number(token)
        if number is None:
            return b"", *before  # malformed: not guessed at
        if number in (38, 48, 58):
            if i < len(tokens) and _number(tokens[i]) == 5:
                args = tokens[i : i + 2]
            elif i < len(tokens) and _number(tokens[i]) == 2:
                args = tokens[i : i + 4]
            else:
                return b"", *before
            i += len(args)
            if number == 58:
                continue  # underline colour: dropped with its arguments
            colour = _extended([_number(a) for a in args])
            if colour is None:
                return b"", *before
            fg, bg = (colour[0], bg) if number == 38 else (fg, colour[0])
            kept += [str(number), *colour[1]]
            continue
        if number not in _PLAIN_SGR:
            continue  # conceal, blink, fonts, framing: dropped
        if number == 0:
            fg = bg = None
        elif 30 <= number <= 37 or 90 <= number <= 97:
            fg = _indexed(number - 30 if number < 90 else number - 82)
        elif 40 <= number <= 47 or 100 <= number <= 107:
            bg = _indexed(number - 40 if number < 100 else number - 92)
        elif number == 39:
            fg = None
        elif number == 49:
            bg = None
        kept.append(str(number))
    if not kept or same_colour(fg, bg):
        return b"", *before
    return b"\x1b[" + ";".join(kept).encode() + b"m", fg, bg


class OutputFilter:
    """One stream of the agent's output on its way to a terminal: `feed` it chunks as they
    come (a sequence may be split between two), get back what may be written. Pure: bytes
    in, bytes out; its state is bounded whatever comes in."""

    GROUND, SKIP_CSI, SKIP_ESC, STRING = range(4)

    def __init__(self, colours: Colours | None = None) -> None:
        self.colours = colours or Colours()
        self.mid_line = False  # whether the last text written did not end a line
        self._state = self.GROUND
        self._pending = b""  # an incomplete sequence or character, at most MAX_SEQUENCE
        self._string_length = 0

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        out = bytearray()
        i, n = 0, len(buf)
        while i < n:
            if self._state != self.GROUND:
                i = self._skip(buf, i)
                continue
            text = _TEXT.match(buf, i)
            if text is not None:
                out += text.group()
                self.mid_line = buf[text.end() - 1] != 0x0A
                i = text.end()
                continue
            byte = buf[i]
            if byte == 0x1B:
                i = self._escape(buf, i, out)
            elif byte < 0x80 or _C1.match(buf, i):
                i += 1 if byte < 0x80 else 2  # a control character: dropped
            elif _UTF8_START.match(buf, i):
                self._pending = buf[i:]  # the rest of the character is in the next chunk
                break
            else:
                out += REPLACEMENT
                self.mid_line = True
                i += 1
        return bytes(out)

    def end(self) -> bytes:
        """The stream ended: an incomplete character shows as U+FFFD, an incomplete
        sequence is dropped."""
        pending, self._pending = self._pending, b""
        self._state = self.GROUND
        if pending and pending[0] != 0x1B:
            self.mid_line = True
            return REPLACEMENT
        return b""

    def _escape(self, buf: bytes, i: int, out: bytearray) -> int:
        n = len(buf)
        if i + 1 == n:
            self._pending = buf[i:]
            return n
        if buf[i + 1] == 0x5B:  # CSI
            match = _CSI.match(buf, i)
            assert match is not None
            end = match.end()
            if end == n:
                if end - i <= MAX_SEQUENCE:
                    self._pending = buf[i:]
                else:
                    self._state = self.SKIP_CSI
                return n
            final = buf[end]
            if not 0x40 <= final <= 0x7E:
                return end  # malformed: dropped, what follows is read afresh
            if (
                final == 0x6D
                and not match.group(2)
                and end - i <= MAX_SEQUENCE
                and match.group(1)[:1] not in (b"<", b"=", b">", b"?")
            ):
                out += sanitised_sgr(match.group(1), self.colours)
            return end + 1
        if buf[i + 1] in _STRINGS:
            self._state = self.STRING
            self._string_length = 0
            return i + 2
        match = _ESC.match(buf, i)
        assert match is not None
        end = match.end()
        if end == n:
            if end - i <= MAX_SEQUENCE:
                self._pending = buf[i:]
            else:
                self._state = self.SKIP_ESC
            return n
        return end + 1 if 0x30 <= buf[end] <= 0x7E else end

    def _skip(self, buf: bytes, i: int) -> int:
        """Reads on through a sequence or string being dropped; where ground resumes."""
        n = len(buf)
        if self._state == self.STRING:
            found = _STRING_END.search(buf, i)
            end = n if found is None else found.start()
            self._string_length += end - i
            if found is not None:
                self._state = self.GROUND
                # ESC ends the string and starts what follows (ESC \ is the usual end).
                return end if buf[end] == 0x1B else end + 1
            if self._string_length > MAX_STRING:
                self._state = self.GROUND  # never ended: what follows is text again
            return n
        body = (_CSI_BODY if self._state == self.SKIP_CSI else _ESC_BODY).match(buf, i)
        assert body is not None
        end = body.end()
        if end == n:
            return n
        low = 0x40 if self._state == self.SKIP_CSI else 0x30
        self._state = self.GROUND
        return end + 1 if low <= buf[end] <= 0x7E else end


class TerminalFilter:
    """The agent's stdout and stderr on their way to one terminal: a filter each, sharing
    the colours they leave it in and whether a line is open."""

    def __init__(self) -> None:
        self.colours = Colours()
        self._streams: dict[str, OutputFilter] = {}

    def feed(self, stream: str, data: bytes) -> bytes:
        found = self._streams.get(stream)
        if found is None:
            found = self._streams[stream] = OutputFilter(self.colours)
        return found.feed(data)

    @property
    def mid_line(self) -> bool:
        return any(f.mid_line for f in self._streams.values())

    def reclaimed(self) -> None:
        """Airlock wrote a fresh line in the default attributes."""
        self.colours.reset()
        for found in self._streams.values():
            found.mid_line = False


# What puts a terminal back in a known state, in this order: the cursor saved where it is,
# so that leaving the alternate screen (which restores a saved cursor) keeps it there when
# there was none; the alternate screen left; a soft reset (DECSTR), where it is understood;
# then each part explicitly, for terminals without DECSTR: scroll region (DECSTBM homes the
# cursor, hence the save and restore around it), attributes, insert mode, cursor visible,
# line wrap on, G0 the ASCII set and invoked (SI).
_LEAVE_ALTERNATE = "\x1b7\x1b[?1049l"
_SOFT_RESET = "\x1b[!p"
_EXPLICIT = "\x1b7\x1b[r\x1b8\x1b[0m\x1b[4l\x1b[?25h\x1b[?7h\x1b(B\x0f"
# Terminals that print the "p" of DECSTR instead of understanding it.
_NO_DECSTR = ("dumb", "linux")


def restore_sequence(term: str | None) -> str:
    """The bytes that reclaim a terminal of type `term` (its TERM), fresh line excluded."""
    soft = "" if not term or term.startswith(_NO_DECSTR) else _SOFT_RESET
    return _LEAVE_ALTERNATE + soft + _EXPLICIT


def reclaim(stream: IO[str], mid_line: bool = True) -> None:
    """Before Airlock writes to a terminal the agent's output reached: a known state and a
    fresh line, so nothing the agent printed can hide, colour or rewrite what follows.
    Nothing is written when `stream` is not a terminal. `mid_line` False: the caller knows
    the cursor is at the start of an empty line."""
    if not stream.isatty():
        return
    stream.write(restore_sequence(os.environ.get("TERM")) + ("\r\n" if mid_line else "\r"))
    stream.flush()


def reclaim_fd(fd: int, mid_line: bool = True) -> None:
    """`reclaim` for a terminal opened as a file descriptor (the prompt's /dev/tty)."""
    if not os.isatty(fd):
        return
    data = (restore_sequence(os.environ.get("TERM")) + ("\r\n" if mid_line else "\r")).encode()
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            time.sleep(0.01)  # a terminal paused with ^S; the text is short
