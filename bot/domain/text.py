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
