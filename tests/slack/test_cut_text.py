"""Long answers are split and cut the way Slack can show them: never inside an entity
(`&amp;` shown as `&am`), never losing the sentence after a long quote, and a long
`--json` answer as whole code blocks, one per section, that read back as the JSON.

Through `nbenv serve` with signed slash commands; the fake Slack refuses any block that
slack_sdk's own Block Kit validators refuse."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tests.conftest import TESTER, USER
from tests.slack.bot import BotServer, published, wait_response
from tests.support.slack_api import FakeSlackApi, blocks_problem

_ENTITY = re.compile(r"&(?:amp|lt|gt);")


def _answer(server: BotServer, slack: FakeSlackApi, user: str, text: str) -> dict[str, Any]:
    """The message USER is shown for `/nbenv TEXT`: the ack's, or the response_url's."""
    url = slack.response_url(f"cut-{uuid.uuid4().hex}")
    answer = server.slash(user, text, response_url=url)
    assert answer.status == 200
    if answer.shown and not answer.shown.startswith("⏳"):
        payload: dict[str, Any] = answer.json
    else:
        payload = wait_response(slack, url)
    assert blocks_problem(payload["blocks"], 50) is None
    return payload


def _sections(payload: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section"]


def test_a_long_reason_is_never_cut_inside_an_entity_and_the_sentence_after_it_stays(
    server: BotServer, rt: Any, image: str, slack: FakeSlackApi
) -> None:
    published(rt, image)
    reason = "a&&&" * 250  # the longest reason allowed: 4,000 characters once escaped

    answer = _answer(server, slack, TESTER, f"reject {image} {reason}")

    sections = _sections(answer)
    assert len(sections) > 1  # too long for one section: split
    for text in sections:
        # Every & starts a whole entity, and no entity is left half in a section.
        assert ";" not in _ENTITY.sub("", text), text[:80] + "…" + text[-80:]
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
    shown = "".join(sections).replace("&amp;", "&")
    assert reason in shown
    assert "promotion is blocked until they approve or an owner overrides" in sections[-1]


def test_a_long_json_answer_is_split_into_whole_code_blocks(
    server: BotServer, rt: Any, image: str, slack: FakeSlackApi
) -> None:
    published(rt, image)

    answer = _answer(server, slack, USER, "status --json")

    sections = _sections(answer)
    assert len(sections) > 1  # longer than one section (3,000 characters)
    for text in sections:
        assert text.startswith("```") and text.endswith("```") and text.count("```") == 2
    data = json.loads("".join(s[3:-3] for s in sections).replace("&amp;", "&"))
    assert image in json.dumps(data)
