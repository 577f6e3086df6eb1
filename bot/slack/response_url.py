"""Private answers through a slash command's or a button's response_url."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from bot.slack.blocks import fit_message

log = logging.getLogger(__name__)


def post_answer(url: str, message: dict[str, Any], *, replace: bool = False) -> None:
    """Post a private answer to a response_url, retrying rate limits and outages."""
    if not url:
        # Not the text: a private answer may hold what only its reader may see (a link).
        log.warning(
            "no response_url: a private answer of %d characters was dropped",
            len(str(message.get("text", ""))),
        )
        return
    client = WebhookClient(
        url,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=5),
            ServerErrorRetryHandler(max_retry_count=3),
        ],
    )
    response = client.send_dict(
        fit_message({**message, "response_type": "ephemeral", "replace_original": replace})
    )
    if response.status_code != 200:
        log.warning("response_url answered %s: %s", response.status_code, response.body)
