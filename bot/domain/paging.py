"""Pages of a long list, newest first, and the cursors that ask for the next one.

A cursor names the last item shown (keyset paging), not a position: entries recorded
while someone reads do not shift the pages they have not seen yet, and the next page
costs the same however deep it is. Cursors are opaque to people (URL-safe base64, fit
a Slack button's value and a shell argument) and come back as hostile input: anything
that is not a cursor nbenv gave out is refused with one line.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from bot.domain.errors import BadInput

T = TypeVar("T")

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_CURSOR = 200  # characters: a cursor nbenv writes is under 100

_VERSION_KIND = "v1"
_AUDIT_KIND = "a1"
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_TIME = re.compile(r"[0-9A-Za-z:.+-]{1,32}")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SEQ = re.compile(r"[1-9][0-9]{0,17}")


@dataclass(frozen=True)
class Page(Generic[T]):
    """ITEMS, newest first; MORE: how many items of the same list come after them (older),
    NEXT: the cursor that asks for those (None when MORE is 0)."""

    items: list[T]
    more: int
    next: str | None


def check_limit(limit: int) -> int:
    """A page size a person may ask for: 1 to MAX_PAGE."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadInput(f"a page holds 1 to {MAX_PAGE} entries, not {limit}")
    return limit


def version_cursor(created_at: str, sha: str) -> str:
    """The cursor of the versions after the one created at CREATED_AT with SHA."""
    return _encode(f"{_VERSION_KIND}|{created_at}|{sha}")


def parse_version_cursor(cursor: str) -> tuple[str, str]:
    """(created_at, sha) of a cursor from version_cursor."""
    fields = _decode(cursor, "versions")
    if (
        len(fields) != 3
        or fields[0] != _VERSION_KIND
        or not _TIME.fullmatch(fields[1])
        or not _FULL_SHA.fullmatch(fields[2])
    ):
        raise _not_a_cursor("versions")
    return fields[1], fields[2]


def audit_cursor(seq: int) -> str:
    """The cursor of the audit entries before entry SEQ."""
    return _encode(f"{_AUDIT_KIND}|{seq}")


def parse_audit_cursor(cursor: str) -> int:
    """The seq of a cursor from audit_cursor."""
    fields = _decode(cursor, "history")
    if len(fields) != 2 or fields[0] != _AUDIT_KIND or not _SEQ.fullmatch(fields[1]):
        raise _not_a_cursor("history")
    return int(fields[1])


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str, listing: str) -> list[str]:
    if not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR:
        raise _not_a_cursor(listing)
    if not _CURSOR_TEXT.fullmatch(cursor):
        raise _not_a_cursor(listing)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _not_a_cursor(listing) from None
    return text.split("|")


def _not_a_cursor(listing: str) -> BadInput:
    return BadInput(
        f"that is not a page cursor of `{listing}`: use the one the previous page gave, "
        "or leave it out for the newest entries"
    )
