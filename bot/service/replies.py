"""What a use case answers the person who asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.domain.notifications import Offer


@dataclass
class Reply:
    """What the person who asked sees (ephemeral in Slack, stdout in the CLI)."""

    text: str
    data: Any = None
    offers: tuple[Offer, ...] = ()  # next steps (buttons in Slack)
