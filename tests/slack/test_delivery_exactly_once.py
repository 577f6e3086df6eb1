"""Never twice, never out of order, against a fake Slack that behaves like the real one:
an answer that leaves it unclear whether Slack posted a message is resolved by looking the
message up before it is sent again, and a 429 holds every message behind it for that
method in that channel, so nothing overtakes it and threads keep their order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.slack.outbox import Pace
from tests.support.outbox_world import CHANNEL
from tests.support.outbox_world import OutboxWorld as _World
from tests.support.slack_api import FakeSlackApi, Message

OTHER_CHANNEL = "C02VISION"


@pytest.fixture
def slack() -> Iterator[FakeSlackApi]:
    with FakeSlackApi() as fake:
        yield fake


@pytest.fixture
def world(runtime: Any, slack: FakeSlackApi) -> _World:
    return _World(runtime, slack, pace=None)


def _replies(slack: FakeSlackApi, root: Message) -> list[str]:
    return [m.text for m in slack.thread(root.channel, root.ts) if m.is_reply]


# -- never twice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome", ["timeout", "drop", "fatal_error", "internal_error", "request_timeout", "http_500"]
)
def test_a_root_slack_stored_without_a_clear_answer_is_posted_once_and_its_thread_follows(
    world: _World, slack: FakeSlackApi, outcome: str
) -> None:
    slack.store_then_fail(outcome)
    world.post("build:root", "build started", thread="unclear answer")
    world.post("build:reply", "step 1 passed", thread="unclear answer")

    world.later(0)  # Slack stores the root; its answer is lost or says it failed
    for _ in range(3):
        world.later(30)

    assert world.texts() == ["build started", "step 1 passed"]  # once, and no orphan thread
    (root,) = [m for m in slack.messages(CHANNEL).values() if not m.is_reply]
    assert _replies(slack, root) == ["step 1 passed"]
    assert set(world.statuses()) == {"sent"}
    # It was looked up by the key in its metadata, which Slack shows only when asked.
    (lookup, *_) = slack.calls("conversations.history")
    assert lookup.args["include_all_metadata"] in (True, "true", "1")


def test_an_unclear_reply_is_looked_up_in_its_thread(world: _World, slack: FakeSlackApi) -> None:
    world.post("build:root", "build started", thread="reply unclear")
    world.later(0)
    slack.store_then_fail("fatal_error")
    world.post("build:reply", "step 1 passed", thread="reply unclear")
    world.later(0)
    world.later(30)

    (root,) = [m for m in slack.messages(CHANNEL).values() if not m.is_reply]
    assert _replies(slack, root) == ["step 1 passed"]
    assert [c.args["ts"] for c in slack.calls("conversations.replies")] == [root.ts]


def test_a_look_up_that_cannot_tell_yet_is_tried_again_before_any_resend(
    world: _World, slack: FakeSlackApi
) -> None:
    slack.store_then_fail("fatal_error")
    world.post("announce:1", "staging has a new version")
    world.later(0)
    slack.fail_next(2, status=503, method="conversations.history")  # Slack is struggling

    for _ in range(4):
        world.later(30)

    assert world.texts() == ["staging has a new version"]
    assert world.statuses() == ["sent"]


def test_an_unclear_answer_for_a_message_slack_did_not_store_sends_it_once(
    world: _World, slack: FakeSlackApi
) -> None:
    slack.fail_next(1, status=500, method="chat.postMessage")  # refused before storing
    world.post("announce:1", "staging has a new version")
    world.later(0)
    assert world.texts() == []

    world.later(30)

    assert world.texts() == ["staging has a new version"]
    assert len(slack.calls("conversations.history")) == 1  # looked up first: not there


# -- rate limits per method and channel --------------------------------------------------


def test_a_429_holds_every_message_behind_it_in_that_channel_until_retry_after(
    world: _World, slack: FakeSlackApi
) -> None:
    slack.fail_next(1, status=429, retry_after=30, method="chat.postMessage")
    world.post("announce:1", "first")
    world.post("announce:2", "second")
    world.post("build:root", "build started", thread="held")
    world.post("build:reply", "step 1 passed", thread="held")
    world.post("announce:other", "elsewhere", channel=OTHER_CHANNEL)

    world.later(0)
    assert world.texts() == []  # nothing overtakes the message Slack asked to wait
    assert world.texts(OTHER_CHANNEL) == ["elsewhere"]  # other channels are not held
    world.later(20)
    assert world.texts() == []

    world.later(11)

    assert world.texts() == ["first", "second", "build started", "step 1 passed"]
    (root,) = [m for m in slack.messages(CHANNEL).values() if m.text == "build started"]
    assert _replies(slack, root) == ["step 1 passed"]
    assert len(slack.failed_calls("chat.postMessage")) == 1


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-5", "0", "soon", str(10**12)])
def test_a_retry_after_that_makes_no_sense_delays_the_channel_but_never_stops_delivery(
    world: _World, slack: FakeSlackApi, retry_after: str
) -> None:
    slack.fail_next(1, status=429, retry_after=retry_after, method="chat.postMessage")
    world.post("announce:1", "first")
    world.post("announce:2", "second")

    world.later(0)
    world.later(3601)  # at most an hour, whatever the header says

    assert world.texts() == ["first", "second"]


def test_posts_are_paced_per_channel_so_slack_does_not_rate_limit_them(
    runtime: Any, slack: FakeSlackApi
) -> None:
    # Slack's realism: a short burst, then 20 a second per channel (about 1 a second in
    # Slack; faster here so the test is quick). The sender keeps to that pace.
    slack.rate_limit("chat.postMessage", per_second=20, burst=3)
    world = _World(runtime, slack, pace=Pace(per_second=20, burst=2))
    for n in range(8):
        world.post(f"announce:{n}", f"message {n}")
    world.post("announce:other", "elsewhere", channel=OTHER_CHANNEL)

    assert world.sender.drain(timeout_s=10, poll_s=0.02) == 0

    assert [c.status for c in slack.failed_calls()] == []  # never a 429
    assert world.texts() == [f"message {n}" for n in range(8)]
    assert world.texts(OTHER_CHANNEL) == ["elsewhere"]


def test_once_slack_rate_limits_a_channel_its_posts_keep_to_slacks_pace(
    runtime: Any, slack: FakeSlackApi
) -> None:
    """By default a channel goes as fast as Slack takes it; after Slack's first 429 it
    keeps to the pace (one a second in Slack; five here, a quarter of what the fake allows,
    so a slow machine cannot bunch two posts together), and gets no second 429."""
    slack.rate_limit("chat.postMessage", per_second=20, burst=2)
    world = _World(runtime, slack, pace=Pace(per_second=5, once_limited=True))
    for n in range(6):
        world.post(f"announce:{n}", f"message {n}")

    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while world.sender.pending() and datetime.now(UTC) < deadline:
        world.later(1)  # Retry-After passes at once; the pace takes real time

    assert world.texts() == [f"message {n}" for n in range(6)]
    assert [c.status for c in slack.failed_calls()] == [429]


def test_under_slacks_rate_limit_every_message_arrives_once_in_order(
    runtime: Any, slack: FakeSlackApi
) -> None:
    """Even when the sender goes faster than Slack allows (a second instance, a smaller
    limit than expected), each 429 holds the channel and the order holds."""
    slack.rate_limit("chat.postMessage", per_second=20, burst=1)
    world = _World(runtime, slack, pace=None)
    world.post("build:root", "build started", thread="racing")
    for n in range(4):
        world.post(f"build:step{n}", f"step {n}", thread="racing")
        world.post(f"announce:{n}", f"news {n}")

    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while world.sender.pending() and datetime.now(UTC) < deadline:
        world.later(1)

    assert world.sender.pending() == 0
    texts = world.texts()
    assert sorted(texts) == sorted(
        ["build started"] + [f"step {n}" for n in range(4)] + [f"news {n}" for n in range(4)]
    )
    assert [x for x in texts if x.startswith("news")] == [f"news {n}" for n in range(4)]
    (root,) = [m for m in slack.messages(CHANNEL).values() if m.text == "build started"]
    assert _replies(slack, root) == [f"step {n}" for n in range(4)]
