"""Refusals that concern the app (a revoked token, a missing scope) pause delivery and
lose nothing; refusals that concern one message park that message at once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk import WebClient
from sqlalchemy import select

from bot.builds.relay import BuildRelay
from bot.service.nbenv import Nbenv
from bot.slack.notifications import SlackNotifier
from bot.slack.outbox import OutboxSender, delivery_pause
from bot.store import tables as t
from bot.store.uow import Store
from tests.builds.conftest import TOKEN, attributes_of, build_events, new_build_id, replies, roots
from tests.conftest import sha_of
from tests.support.slack_api import FakeSlackApi


class _World:
    """The relay and its sender on a clock the test moves (backoffs pass at once)."""

    def __init__(self, runtime: Any, slack: FakeSlackApi) -> None:
        self.now = datetime.now(UTC)
        self.store = Store(runtime.store.engine, clock=lambda: self.now)
        self.sender = OutboxSender(self.store, WebClient(token=TOKEN, base_url=slack.base_url))
        self.relay = BuildRelay(
            Nbenv(runtime.config, self.store, notifier=SlackNotifier()), self.sender
        )

    def feed(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            assert self.relay.handle_build(event, attributes_of(event)) == "applied"

    def later(self, seconds: float) -> int:
        self.now += timedelta(seconds=seconds)
        return self.sender.deliver_due()

    def statuses(self) -> list[str]:
        with self.store.read() as tx:
            return list(tx.connection.execute(select(t.outbox.c.status)).scalars())


@pytest.mark.parametrize("refusal", ["token_revoked", "invalid_auth", "missing_scope"])
def test_a_revoked_token_pauses_delivery_and_every_message_arrives_once_in_order_after_the_fix(
    runtime: Any, slack: FakeSlackApi, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    world = _World(runtime, slack)
    sha = sha_of(f"paused by {refusal}")
    events = build_events(new_build_id(), sha, branch="feature")
    world.feed(events[:1])  # the thread's root is out
    (root,) = roots(slack, sha)

    slack.refuse(refusal)  # the token is revoked while the build thread is being delivered
    with caplog.at_level(logging.WARNING, logger="bot.slack.outbox"):
        world.feed(events[1:])
        calls_when_paused = len(slack.calls())
        assert world.later(10) == 0 and world.later(10) == 0
        assert len(slack.calls()) == calls_when_paused  # paused: nothing is tried meanwhile
        world.later(60)  # a probe: still refused
    pause = delivery_pause(world.store)
    assert pause is not None and pause.reason == refusal
    assert world.sender.pending() > 0 and "dead" not in world.statuses()  # nothing discarded
    paused_lines = [r for r in caplog.records if "delivery paused" in r.getMessage()]
    assert len(paused_lines) == 1 and refusal in paused_lines[0].getMessage()

    slack.stop_refusing()  # the operator fixed the token or the scope
    world.later(61)
    world.later(1)

    assert delivery_pause(world.store) is None and world.sender.pending() == 0
    assert [m.ts for m in roots(slack, sha)] == [root.ts]  # one root, updated in place
    (root,) = roots(slack, sha)
    assert "*SUCCESS*" in root.text
    assert [m.text.split()[0] for m in replies(slack, root)] == ["▶️", "✅"]
    assert set(world.statuses()) <= {"sent", "superseded"}


@pytest.mark.parametrize("refusal", ["restricted_action", "no_permission", "ekm_access_denied"])
def test_a_message_refused_for_good_is_not_retried_and_does_not_hold_the_thread(
    runtime: Any, slack: FakeSlackApi, refusal: str
) -> None:
    world = _World(runtime, slack)
    sha = sha_of(f"refused with {refusal}")
    events = build_events(new_build_id(), sha, branch="feature")
    world.feed(events[:1])
    (root,) = roots(slack, sha)

    slack.refuse(refusal, method="chat.postMessage", times=1)  # the first reply
    world.feed(events[1:])
    world.later(30)
    world.later(300)

    refused = [c for c in slack.calls("chat.postMessage") if c.response.get("error")]
    assert len(refused) == 1  # tried once, not again and again for minutes
    assert delivery_pause(world.store) is None and world.sender.pending() == 0
    assert [m.text.split()[0] for m in replies(slack, root)] == ["✅"]


def test_the_crash_look_up_reads_the_channel_by_its_id(slack: FakeSlackApi) -> None:
    """Slack's conversations.history wants an ID: a #name or a channel the bot is not in
    is refused, as the config and the membership rule make sure never happens."""
    client = WebClient(token=TOKEN, base_url=slack.base_url)
    assert client.conversations_history(channel="C01NLP")["ok"]
    for channel, error in (
        ("#nlp-images", "channel_not_found"),
        ("C09ELSEWHERE", "not_in_channel"),
    ):
        slack.keep_bot_out_of("C09ELSEWHERE")
        with pytest.raises(Exception, match=error):
            client.conversations_history(channel=channel)
