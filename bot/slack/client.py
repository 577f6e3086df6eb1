"""The Slack Web API client, pointed at SLACK_API_URL when set (tests, proxies)."""

from __future__ import annotations

import os
import sys

from slack_sdk import WebClient

DEFAULT_API_URL = "https://slack.com/api/"


def api_url() -> str:
    url = os.environ.get("SLACK_API_URL") or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


def web_client(token: str | None = None, *, timeout: int = 10) -> WebClient:
    # Retries are the outbox's job (it persists them, and looks a message up before it
    # sends it again); the outbox's own client drops slack_sdk's retry after a dropped
    # connection, which would re-post blindly.
    return WebClient(
        token=token or os.environ.get("SLACK_BOT_TOKEN"), base_url=api_url(), timeout=timeout
    )


def setting(program: str, name: str, where: str) -> str | None:
    """The environment variable NAME; when it is not set, None, and `nbenv PROGRAM` says
    in one line WHERE its value is found."""
    value = os.environ.get(name)
    if not value:
        print(f"nbenv {program}: {name} is not set ({where})", file=sys.stderr)
    return value or None


def bot_token(program: str) -> str | None:
    return setting(
        program, "SLACK_BOT_TOKEN", "Slack app → OAuth & Permissions → Bot User OAuth Token, xoxb-…"
    )
