"""Text cut into words as a POSIX shell cuts it, in linear time.

The slash command arrives as one string; the CLI's arguments come already cut.
"""

from __future__ import annotations

import re

from bot.domain.errors import BadInput

_BLANKS = " \t\r\n"  # what separates words, as in a POSIX shell (and shlex)
_BLANK_RUN = re.compile(r"[ \t\r\n]+")
_PLAIN_RUN = re.compile(r"[^ \t\r\n'\"\\]+")
_DOUBLE_QUOTED_RUN = re.compile(r'[^"\\]+')
_SPECIAL = re.compile(r"['\"\\]")


def split_words(text: str) -> list[str]:
    """TEXT cut into words the way `shlex.split` (a POSIX shell) cuts it — quotes, backslash
    escapes — in time linear in the length of TEXT (shlex grows each word one character
    at a time, which is quadratic: 23 s for a 1 MB word)."""
    if not _SPECIAL.search(text):  # the usual case: words and blanks only
        return [word for word in _BLANK_RUN.split(text) if word]
    words: list[str] = []
    parts: list[str] | None = None  # the pieces of the word being read; None between words
    at, end = 0, len(text)
    while at < end:
        char = text[at]
        if char in _BLANKS:
            if parts is not None:
                words.append("".join(parts))
                parts = None
            at = _end_of(_BLANK_RUN, text, at)
            continue
        if parts is None:
            parts = []
        if char == "'":  # nothing is special up to the closing quote
            close = text.find("'", at + 1)
            if close < 0:
                raise _unreadable("No closing quotation")
            parts.append(text[at + 1 : close])
            at = close + 1
        elif char == '"':
            at = _read_double_quoted(text, at + 1, parts)
        elif char == "\\":
            if at + 1 >= end:
                raise _unreadable("No escaped character")
            parts.append(text[at + 1])
            at += 2
        else:
            run_end = _end_of(_PLAIN_RUN, text, at)
            parts.append(text[at:run_end])
            at = run_end
    if parts is not None:
        words.append("".join(parts))
    return words


def _end_of(run: re.Pattern[str], text: str, at: int) -> int:
    found = run.match(text, at)
    return found.end() if found else at


def _read_double_quoted(text: str, at: int, parts: list[str]) -> int:
    """The inside of "…" from AT into PARTS (a backslash escapes only `"` and itself, as in
    a shell); where reading goes on after the closing quote."""
    while True:
        run_end = _end_of(_DOUBLE_QUOTED_RUN, text, at)
        parts.append(text[at:run_end])
        at = run_end
        if at < len(text) and text[at] == '"':
            return at + 1
        if at >= len(text):
            raise _unreadable("No closing quotation")
        if at + 1 >= len(text):  # a backslash, then nothing
            raise _unreadable("No escaped character")
        escaped = text[at + 1]  # text[at] is a backslash
        parts.append(escaped if escaped in '"\\' else "\\" + escaped)
        at += 2


def _unreadable(why: str) -> BadInput:
    return BadInput(f"could not read the command: {why}")
