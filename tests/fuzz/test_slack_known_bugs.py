"""Bugs the fuzz tests found where a button or dialog carries less than it should, each
on a server of its own: what a failing case would leave behind (a job that fails, an
answer the sender cannot deliver) must not trouble the tests after it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from bot.slack import views
from tests.conftest import OWNER, TESTER
from tests.fuzz.state import snapshot
from tests.fuzz.strategies import one_line
from tests.fuzz.test_slack_http import _payload_body, _press, _staged, _submission, check_answer
from tests.slack.bot import BotServer, blocks_text, wait_until
from tests.support.slack_api import FakeSlackApi


@pytest.mark.parametrize("bad", [None, [], {}, ["nlp.t01"]], ids=["null", "[]", "{}", "[image]"])
def test_a_dialog_whose_metadata_names_no_image_is_refused_in_one_line(
    server: BotServer, slack: FakeSlackApi, rt: Any, image: str, log: Any, bad: Any
) -> None:
    commit = _staged(rt, image)
    payload = _submission(image, commit, slack.response_url(f"fuzz-{uuid.uuid4().hex}"))
    metadata = {"image": bad, "sha": commit, "response_url": ""}
    payload["view"]["private_metadata"] = json.dumps(metadata)
    before = snapshot(rt, image)

    answer = server.signed(_payload_body(payload))

    # (It was a 500: `assert image` in the service, or an unhashable image.)
    assert answer.status == 200, answer.text
    assert answer.json["response_action"] == "errors"
    assert one_line(answer.json["errors"][views.REASON_BLOCK])
    assert snapshot(rt, image).same_but_refusals(before)


def test_a_confirm_button_whose_command_names_no_image_is_answered_in_one_line(
    server: BotServer, slack: FakeSlackApi, rt: Any, image: str, log: Any
) -> None:
    commit = _staged(rt, image)
    value = {"image": image, "cmd": {"name": "promote", "confirmed": True}, "expect": {}}
    payload = _press(image, commit, OWNER, views.CONFIRM, value)
    url = payload["response_url"] = slack.response_url(f"confirm-{uuid.uuid4().hex}")
    before = snapshot(rt, image)

    assert check_answer(server.signed(_payload_body(payload))) is False
    name = url.rsplit("/response/", 1)[1]
    wait_until(
        # (all three attempts of the job, so that no retry fails during the next test)
        lambda: (
            slack.calls(f"response_url:/response/{name}") or log.new().count("(slack) failed") >= 3
        ),
        what="an answer or the job's last failure",
    )

    # (Its job failed on `assert image` three times, and never answered.)
    (answer,) = slack.calls(f"response_url:/response/{name}")
    assert "⚠️" in blocks_text(answer.args)
    assert snapshot(rt, image).same_but_refusals(before)


def test_a_confirm_press_without_a_response_url_is_answered_directly(
    server: BotServer, slack: FakeSlackApi, rt: Any, image: str, log: Any
) -> None:
    commit = _staged(rt, image)
    value = {
        "image": image,
        "cmd": {"name": "promote", "image": image, "confirmed": True},
        "expect": {"staging": 1, "production": 0, "fallback": 0},
    }
    payload = _press(image, commit, TESTER, views.CONFIRM, value)  # a tester: refused
    payload["response_url"] = ""
    posted = len(slack.calls("chat.postMessage"))

    assert check_answer(server.signed(_payload_body(payload))) is False

    def told() -> list[Any]:
        return [c for c in slack.calls("chat.postMessage")[posted:] if c.args["channel"] == TESTER]

    wait_until(
        lambda: told() or "background step failed" in log.new(),
        what="an answer or the sender's failure",
    )

    assert told()
    assert "Traceback" not in log.new()
