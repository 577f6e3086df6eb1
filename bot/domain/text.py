"""Text that reaches Slack: user-supplied parts are escaped so they cannot mention or link."""

from __future__ import annotations


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


TRUNCATED = "… (truncated)"


def cut(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """TEXT if it fits in LIMIT characters, else its start and MARKER, LIMIT in all."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[:limit]
    return text[: limit - len(marker)] + marker


def cut_start(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """TEXT if it fits, else MARKER and its end: for tracebacks, whose end says most."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[len(text) - limit :]
    return marker + text[len(text) - (limit - len(marker)) :]


def cut_mrkdwn(text: str, limit: int) -> str:
    """TEXT cut like `cut`, with a code block the cut left open closed again."""
    if len(text) <= limit:
        return text
    shortened = cut(text, limit - 3)
    return shortened + "```" if shortened.count("```") % 2 else shortened
