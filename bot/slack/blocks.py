"""Block Kit for messages the service describes as text + buttons."""

from __future__ import annotations

from typing import Any


def message_blocks(text: str, buttons: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}
    ]
    if buttons:
        elements = []
        for button in buttons:
            element: dict[str, Any] = {
                "type": "button",
                "action_id": button["action_id"],
                "text": {"type": "plain_text", "text": button["text"]},
                "value": button["value"],
            }
            if button.get("style"):
                element["style"] = button["style"]
            elements.append(element)
        blocks.append({"type": "actions", "elements": elements})
    return blocks
