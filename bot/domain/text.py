"""Text that reaches Slack: user-supplied parts are escaped so they cannot mention or link."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)>")
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")


def escape(text: str | None) -> str:
    """Escape &, < and > as Slack asks, so `<!channel>` or `<http://x|y>` stay plain text."""
    if not text:
        return ""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(user: str) -> str:
    """Mention a Slack user ID; anything that is not one (a build, the CLI) stays plain text."""
    if user.startswith(("U", "W")) and user.isalnum():
        return f"<@{user}>"
    return escape(user)


def to_plain(text: str) -> str:
    """Slack mrkdwn → plain text: `<@U1>` → `@U1`, links → `label (url)`, entities undone.

    For terminals, and for what the audit log keeps of a message nbenv wrote.
    """
    text = _USER_MENTION.sub(r"@\1", text)
    text = _LINK.sub(r"\2 (\1)", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def age(moment: str | None, now: datetime | None = None) -> str:
    """'3d ago', '5h ago', '12m ago', 'just now' since an ISO time; '' when unknown."""
    if not moment:
        return ""
    try:
        then = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


TRUNCATED = "… (truncated)"
# How far back a cut may move to stay outside an entity (`&amp;` is 5 long) or a
# `<@U…>` / `<url|label>` reference (a link nbenv shows is at most ~1,000 characters).
_ENTITY_SPAN = 5
_REFERENCE_SPAN = 1100


def safe_end(text: str, end: int) -> int:
    """END, or the nearest position before it that does not fall inside an entity
    (`&lt;`) or a `<…>` reference of the mrkdwn TEXT: cutting there keeps every entity
    whole, so Slack never shows `&lt` or half a link."""
    end = max(0, min(end, len(text)))
    amp = text.rfind("&", max(0, end - _ENTITY_SPAN + 1), end)
    if amp != -1 and ";" not in text[amp:end]:
        end = amp
    angle = text.rfind("<", max(0, end - _REFERENCE_SPAN), end)
    if angle != -1 and ">" not in text[angle:end]:
        end = angle
    return end


def safe_start(text: str, start: int) -> int:
    """START, or the nearest position after it outside an entity or a `<…>` reference."""
    start = max(0, min(start, len(text)))
    inside = safe_end(text, start)
    if inside == start:
        return start
    closer = text.find(">" if text[inside] == "<" else ";", start)
    return closer + 1 if closer != -1 else len(text)


def cut(text: str, limit: int, marker: str = TRUNCATED, *, mrkdwn: bool = True) -> str:
    """TEXT if it fits in LIMIT characters, else its start and MARKER, LIMIT at most: cut
    between characters and, in MRKDWN text, never inside an entity or a `<…>` reference
    (plain text, not yet escaped, has neither)."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[: safe_end(text, limit) if mrkdwn else limit]
    room = limit - len(marker)
    return text[: safe_end(text, room) if mrkdwn else room] + marker


def cut_start(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """TEXT if it fits, else MARKER and its end: for tracebacks, whose end says most."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[safe_start(text, len(text) - limit) :]
    return marker + text[safe_start(text, len(text) - (limit - len(marker))) :]


def quote(text: str | None, limit: int) -> str:
    """What someone typed, shown in a message: cut to LIMIT characters BEFORE escaping,
    so the cut never falls inside an entity and what follows the quote is kept."""
    return escape(cut(text or "", limit, "…", mrkdwn=False))


def cut_mrkdwn(text: str, limit: int) -> str:
    """TEXT cut like `cut`, with a code block the cut left open closed again."""
    if len(text) <= limit:
        return text
    shortened = cut(text, limit - 3)
    return shortened + "```" if shortened.count("```") % 2 else shortened
