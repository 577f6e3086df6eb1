"""Every message we send fits in Slack: what is too long is cut with a visible marker,
judged by the fake Slack's copy of Slack's own limits."""

from __future__ import annotations

import json

from bot.slack.blocks import fit_message, message_blocks
from tests.support.slack_api import blocks_problem, message_problem


def test_oversized_messages_are_cut_to_what_slack_accepts() -> None:
    huge = "x" * 1_000_000
    buttons = [
        {"action_id": "nbenv_approve", "text": "A" * 200, "value": json.dumps({"image": "i"})},
        {"action_id": "nbenv_reject", "text": "Reject", "value": "v" * 5000},
    ]
    payload = {"channel": "C1", "text": huge, "blocks": message_blocks(huge + "\n" + huge, buttons)}
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": huge}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": huge}] * 20},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": huge}] * 20},
        *({"type": "section", "text": {"type": "mrkdwn", "text": "s"}} for _ in range(80)),
    ]

    for original in (payload, {"text": "t", "blocks": blocks}):
        assert message_problem(original) is not None
        fitted = fit_message(original)
        assert message_problem(fitted) is None
        assert "(truncated)" in json.dumps(fitted)

    fitted = fit_message(payload)
    (actions,) = [b for b in fitted["blocks"] if b["type"] == "actions"]
    # A button whose value would be cut names nothing: it is left out, not broken.
    assert [e["action_id"] for e in actions["elements"]] == ["nbenv_approve"]
    assert blocks_problem(fitted["blocks"], 50) is None
