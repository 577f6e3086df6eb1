"""Text that reaches Slack: user-supplied parts are escaped so they cannot mention or link."""

from __future__ import annotations

import re

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
