"""The fake Slack refuses what Slack refuses, so delivery bugs show in tests: malformed
message metadata, metadata read back without asking for it, a response_url used more than
5 times, calls beyond the rate limit of a method in a channel (when a test asks for that
realism), and answers that leave the client unsure whether the message was posted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from tests.support.slack_api import FakeSlackApi

TOKEN = "xoxb-test"
KEY = {"event_type": "nbenv_outbox", "event_payload": {"key": "announce:1"}}


@pytest.fixture
def slack() -> Iterator[FakeSlackApi]:
    with FakeSlackApi() as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlackApi) -> WebClient:
    # One try per call, as the outbox makes them: the fake's answers are seen as they are.
    return WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])


def _error(call: Any) -> str:
    with pytest.raises(SlackApiError) as refused:
        call()
    return str(refused.value.response["error"])


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ("nbenv_outbox", "invalid_metadata_format"),
        (["nbenv_outbox"], "invalid_metadata_format"),
        ({"event_payload": {"key": "k"}}, "invalid_metadata_schema"),
        ({"event_type": "", "event_payload": {"key": "k"}}, "invalid_metadata_schema"),
        ({"event_type": "has spaces", "event_payload": {}}, "invalid_metadata_schema"),
        ({"event_type": "nbenv_outbox"}, "invalid_metadata_schema"),
        ({"event_type": "nbenv_outbox", "event_payload": "k"}, "invalid_metadata_schema"),
        ({"event_type": "nbenv_outbox", "event_payload": {"k": None}}, "invalid_metadata_schema"),
        ({"event_type": "nbenv_outbox", "event_payload": {"k": [1]}}, "invalid_metadata_schema"),
    ],
)
def test_malformed_metadata_is_refused_and_nothing_is_posted(
    slack: FakeSlackApi, client: WebClient, metadata: Any, error: str
) -> None:
    post = {"channel": "C1", "text": "hi", "metadata": metadata}
    assert _error(lambda: client.api_call("chat.postMessage", json=post)) == error
    assert slack.messages() == {}
    posted = client.chat_postMessage(channel="C1", text="hi", metadata=KEY)  # well formed
    assert (
        _error(
            lambda: client.chat_update(channel="C1", ts=posted["ts"], text="x", metadata=metadata)
        )
        == error
    )


def test_metadata_is_read_back_only_when_asked_for(client: WebClient) -> None:
    root = client.chat_postMessage(channel="C1", text="root", metadata=KEY)
    client.chat_postMessage(channel="C1", text="reply", thread_ts=root["ts"], metadata=KEY)

    plain = client.conversations_history(channel="C1")["messages"]
    asked = client.conversations_history(channel="C1", include_all_metadata=True)["messages"]
    assert [m.get("metadata") for m in plain] == [None]
    assert [m["metadata"] for m in asked] == [KEY]
    thread = client.conversations_replies(channel="C1", ts=root["ts"])["messages"]
    assert all("metadata" not in m for m in thread)
    thread = client.conversations_replies(channel="C1", ts=root["ts"], include_all_metadata=True)
    assert [m["metadata"] for m in thread["messages"]] == [KEY, KEY]


def test_a_response_url_takes_five_posts_then_answers_used_url(slack: FakeSlackApi) -> None:
    webhook = WebhookClient(slack.response_url("five"))
    assert [webhook.send(text=f"answer {n}").status_code for n in range(5)] == [200] * 5

    sixth = webhook.send(text="answer 5")

    assert (sixth.status_code, sixth.body) == (404, "used_url")
    assert len(slack.calls("response_url:/response/five")) == 5
    assert [c.status for c in slack.failed_calls("response_url:/response/five")] == [404]


def test_rate_limits_are_per_method_and_channel_and_opt_in(
    slack: FakeSlackApi, client: WebClient
) -> None:
    for n in range(3):  # no limit unless a test asks for it
        client.chat_postMessage(channel="C1", text=f"free {n}")
    slack.rate_limit("chat.postMessage", per_second=0.5, burst=1)

    client.chat_postMessage(channel="C1", text="first")
    with pytest.raises(SlackApiError) as limited:
        client.chat_postMessage(channel="C1", text="too soon")
    client.chat_postMessage(channel="C2", text="another channel")
    client.chat_update(
        channel="C1",
        ts=client.conversations_history(channel="C1")["messages"][0]["ts"],
        text="edit",
    )

    assert limited.value.response.status_code == 429
    assert limited.value.response["error"] == "ratelimited"
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    assert "too soon" not in [m.text for m in slack.messages().values()]
    slack.advance(2)  # a Retry-After later
    client.chat_postMessage(channel="C1", text="in time")


@pytest.mark.parametrize("outcome", ["fatal_error", "internal_error", "request_timeout"])
def test_a_post_can_be_stored_and_then_answered_with_an_error(
    slack: FakeSlackApi, client: WebClient, outcome: str
) -> None:
    slack.store_then_fail(outcome)

    assert _error(lambda: client.chat_postMessage(channel="C1", text="hi", metadata=KEY)) == outcome

    assert [m.text for m in slack.messages().values()] == ["hi"]  # yet Slack has it
    client.chat_postMessage(channel="C1", text="next")  # once only
    assert [m.text for m in slack.messages().values()] == ["hi", "next"]


@pytest.mark.parametrize("outcome", ["timeout", "drop", "http_500"])
def test_a_post_can_be_stored_and_then_left_without_an_answer(
    slack: FakeSlackApi, outcome: str
) -> None:
    slack.store_then_fail(outcome)
    client = WebClient(token=TOKEN, base_url=slack.base_url, timeout=1, retry_handlers=[])

    with pytest.raises((OSError, SlackApiError)):
        client.chat_postMessage(channel="C1", text="hi")

    assert [m.text for m in slack.messages().values()] == ["hi"]
    assert [c.method for c in slack.failed_calls()] == ["chat.postMessage"]
