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


def test_cuts_never_fall_inside_an_entity_or_a_reference() -> None:
    from bot.domain.text import TRUNCATED, cut, cut_start, escape, quote

    escaped = escape("<&>" * 400)  # &lt;&amp;&gt; … : a cut anywhere may land inside one
    for limit in range(100, 130):
        head = cut(escaped, limit)
        assert len(head) <= limit and head.endswith(TRUNCATED)
        assert head[: -len(TRUNCATED)].endswith(";")
        tail = cut_start(escaped, limit)
        assert len(tail) <= limit and tail[len(TRUNCATED) :].startswith("&")
    link = "see <https://example.com/" + "x" * 200 + "|logs> now"
    assert cut(link, 60, "…") == "see …"  # half a link would show its raw URL
    # A quote is cut before it is escaped, so what follows it stays whole.
    assert quote("a&" * 50, 10) == "a&amp;a&amp;a&amp;a&amp;a…"
    assert quote("<" + "x" * 50, 10) == "&lt;xxxxxxxx…"
