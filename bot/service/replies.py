"""What a use case answers the person who asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The buttons of the direct message to someone running a revoked SHA.
REPLACE = "nbenv_replace"
STOP = "nbenv_stop"


@dataclass(frozen=True)
class Button:
    """An action offered with a message, in domain words: the Slack adapter draws it."""

    action_id: str
    text: str
    value: dict[str, Any]
    style: str | None = None  # primary | danger


@dataclass
class Reply:
    """What the person who asked sees (ephemeral in Slack, stdout in the CLI)."""

    text: str
    data: Any = None
    buttons: list[Button] = field(default_factory=list)
